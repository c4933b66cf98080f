//! The entries lessor makes and deletes: a role's LDIF run record by
//! record (undone when it fails half-way), group memberships joined and
//! left, and the listing tidy sweeps.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, NaiveDateTime, Utc};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapError, LdapResult, Mod, Scope, SearchEntry};
use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::{BackendUser, LeaseRef, PluginError};
use tracing::{debug, warn};

use super::{LdapPlugin, Lookup, MEMBER};
use crate::config::LdapRole;
use crate::error::{failed, rc, refused};
use crate::ldif::{Op, Secrets};
use crate::template::Values;

impl LdapPlugin {
    /// Runs rendered operations in order; `tolerant` for deletions, where
    /// an entry or value already gone is what was wanted.
    async fn run(
        &self,
        ldap: &mut Ldap,
        ops: Vec<Op>,
        how: Run<'_>,
        cx: &Context<'_>,
        redactor: &Redactor,
    ) -> Result<(), PluginError> {
        let Run { label, tolerant, started } = how;
        let total = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            let what = op.describe();
            let step = cx.step(format!("{label} record {} of {total}", i + 1), true);
            if let Some(started) = started {
                started.store(true, Ordering::SeqCst);
            }
            let result =
                apply(ldap, op).await.map_err(|e| failed(&e, &what, &self.conn.bind_dn, &step, redactor))?;
            let gone = tolerant && matches!(result.rc, rc::NO_SUCH_OBJECT | rc::NO_SUCH_ATTRIBUTE);
            if result.rc != rc::SUCCESS && !gone {
                return Err(refused(&result, &what, &self.conn.bind_dn, &step, redactor));
            }
        }
        Ok(())
    }

    /// Adds `dn` to each group (`join`) or removes it (a member already
    /// there, or already gone with its group, is fine).
    async fn membership(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        groups: &[String],
        join: bool,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        for group in groups {
            let member = HashSet::from([dn.as_bytes().to_vec()]);
            let (what, change, fine): (_, _, &[u32]) = match join {
                true => (
                    format!("add member {dn} to {group}"),
                    Mod::Add(MEMBER.to_vec(), member),
                    &[rc::SUCCESS, rc::ATTRIBUTE_OR_VALUE_EXISTS],
                ),
                false => (
                    format!("remove member {dn} from {group}"),
                    Mod::Delete(MEMBER.to_vec(), member),
                    &[rc::SUCCESS, rc::NO_SUCH_ATTRIBUTE, rc::NO_SUCH_OBJECT],
                ),
            };
            let result = ldap
                .modify(group, vec![change])
                .await
                .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default()))?;
            if !fine.contains(&result.rc) {
                return Err(refused(&result, &what, &self.conn.bind_dn, cx, &Redactor::default()));
            }
        }
        Ok(())
    }

    /// The groups under `groupdn` that list `dn` as a member.
    pub(super) async fn groups_of(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        cx: &Context<'_>,
    ) -> Result<Vec<String>, PluginError> {
        let Some(base) = &self.conn.groupdn else { return Ok(Vec::new()) };
        let filter = format!("(member={})", ldap3::ldap_escape(dn));
        let what = format!("search {filter} under {base}");
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default()))?;
        Ok(entries.into_iter().map(|e| SearchEntry::construct(e).dn).collect())
    }

    pub(super) async fn create_entry(
        &self,
        role: &LdapRole,
        ops: Vec<Op>,
        dn: &str,
        started: &AtomicBool,
        cx: &Context<'_>,
        redactor: &Redactor,
    ) -> Result<(), PluginError> {
        let mut ldap = self.admin(cx).await?;
        self.run(
            &mut ldap,
            ops,
            Run { label: "creation_ldif", tolerant: false, started: Some(started) },
            cx,
            redactor,
        )
        .await?;
        self.membership(&mut ldap, dn, &role.groups, true, cx).await
    }

    /// After a failed creation: the role's `rollback_ldif` (or its
    /// `deletion_ldif`) and the group memberships undone, best effort; the
    /// broker revokes the username regardless.
    pub(super) async fn roll_back(&self, role: &LdapRole, values: &Values<'_>, dn: &str, cx: &Context<'_>) {
        let (ldif, label) = match &role.rollback {
            Some(ldif) => (ldif, "rollback_ldif"),
            None => (&role.deletion, "deletion_ldif"),
        };
        let work = async {
            let ops = ldif
                .render(values, &Secrets::default())
                .map_err(|message| PluginError::InvalidRole { message })?;
            let mut ldap = self.admin(cx).await?;
            self.membership(&mut ldap, dn, &role.groups, false, cx).await?;
            self.run(&mut ldap, ops, Run { label, tolerant: true, started: None }, cx, &Redactor::default())
                .await
        };
        match self.bounded(cx, work).await {
            Ok(()) => debug!(connection = %self.name, dn, "rolled back a failed creation"),
            Err(e) => warn!(connection = %self.name, dn, error = %e,
                "rolling back a failed creation failed; the broker revokes the user"),
        }
    }

    /// Revocation with the role's recipe: the groups left, `deletion_ldif` run.
    pub(super) async fn revoke_with_role(
        &self,
        role: &LdapRole,
        lease: &LeaseRef<'_>,
        stored: &Stored,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let now = Utc::now();
        let values = Values {
            username: lease.username,
            password: None,
            role: lease.role,
            issued_at: now,
            expires_at: now,
        };
        let dn = match &stored.dn {
            Some(dn) => dn.clone(),
            None => role
                .creation
                .entry_dn(&values)
                .ok_or_else(|| PluginError::Internal { message: "creation_ldif adds no entry".into() })?
                .map_err(|message| PluginError::InvalidRole { message })?,
        };
        let ops = role
            .deletion
            .render(&values, &Secrets::default())
            .map_err(|message| PluginError::InvalidRole { message })?;
        let mut groups = role.groups.clone();
        groups.extend(stored.groups.iter().filter(|g| !role.groups.contains(g)).cloned());
        let mut ldap = self.admin(cx).await?;
        self.membership(&mut ldap, &dn, &groups, false, cx).await?;
        self.run(
            &mut ldap,
            ops,
            Run { label: "deletion_ldif", tolerant: true, started: None },
            cx,
            &Redactor::default(),
        )
        .await
    }

    /// Revocation without the role (it was removed from the config, or
    /// tidy found the user): the entry recorded at issuance, or the one
    /// named `username` under `userdn`, leaves its groups and is deleted.
    pub(super) async fn revoke_default(
        &self,
        username: &str,
        stored: &Stored,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let mut ldap = self.admin(cx).await?;
        let dn = match &stored.dn {
            Some(dn) => dn.clone(),
            None => match self.lookup(&mut ldap, username, cx).await? {
                Lookup::Found(dn) => dn,
                Lookup::Missing => return Ok(()),
            },
        };
        let groups = match stored.groups.is_empty() {
            false => stored.groups.clone(),
            true => self.groups_of(&mut ldap, &dn, cx).await?,
        };
        self.membership(&mut ldap, &dn, &groups, false, cx).await?;
        let what = format!("delete {dn}");
        let result = ldap
            .delete(&dn)
            .await
            .map_err(|e| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default()))?;
        if !matches!(result.rc, rc::SUCCESS | rc::NO_SUCH_OBJECT) {
            return Err(refused(&result, &what, &self.conn.bind_dn, cx, &Redactor::default()));
        }
        Ok(())
    }

    pub(super) async fn users(
        &self,
        prefix: &str,
        cx: &Context<'_>,
    ) -> Result<Vec<BackendUser>, PluginError> {
        let mut ldap = self.admin(cx).await?;
        let attr = self.conn.userattr.clone();
        let filter = format!("({attr}={}*)", ldap3::ldap_escape(prefix));
        let what = format!("search {filter} under {}", self.conn.userdn);
        let err = |e: LdapError| failed(&e, &what, &self.conn.bind_dn, cx, &Redactor::default());
        let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> =
            vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(500))];
        let mut stream = ldap
            .streaming_search_with(
                adapters,
                &self.conn.userdn,
                Scope::OneLevel,
                &filter,
                vec![attr.clone(), "createTimestamp".to_string()],
            )
            .await
            .map_err(err)?;
        let mut users = Vec::new();
        while let Some(entry) = stream.next().await.map_err(err)? {
            let entry = SearchEntry::construct(entry);
            if entry.dn.eq_ignore_ascii_case(&self.conn.bind_dn) {
                continue;
            }
            let get = |name: &str| {
                entry
                    .attrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let created_at = get("createTimestamp").first().and_then(|t| generalized_time(t));
            for name in get(&attr).into_iter().filter(|n| n.starts_with(prefix)) {
                users.push(BackendUser { name, created_at });
            }
        }
        let done = stream.finish().await;
        if done.rc != rc::SUCCESS {
            return Err(refused(&done, &what, &self.conn.bind_dn, cx, &Redactor::default()));
        }
        Ok(users)
    }
}

/// How [`LdapPlugin::run`] runs a list of records.
struct Run<'a> {
    /// The LDIF's key, for messages (`creation_ldif`).
    label: &'a str,
    /// For deletions: an entry or value already gone is what was wanted.
    tolerant: bool,
    /// Set once the first record is sent (so a failure knows whether
    /// anything may need undoing).
    started: Option<&'a AtomicBool>,
}

/// Where revocation finds what issuance recorded (`plugin_data`).
#[derive(Debug, Default)]
pub(super) struct Stored {
    pub(super) dn: Option<String>,
    pub(super) groups: Vec<String>,
}

impl Stored {
    pub(super) fn read(data: Option<&serde_json::Value>) -> Self {
        let Some(data) = data else { return Self::default() };
        Self {
            dn: data.get("dn").and_then(|d| d.as_str()).map(str::to_string),
            groups: data
                .get("groups")
                .and_then(|g| g.as_array())
                .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
        }
    }
}

async fn apply(ldap: &mut Ldap, op: Op) -> Result<LdapResult, LdapError> {
    match op {
        Op::Add { dn, attrs } => ldap.add(&dn, attrs).await,
        Op::Modify { dn, mods } => ldap.modify(&dn, mods).await,
        Op::Delete { dn } => ldap.delete(&dn).await,
    }
}

/// An LDAP GeneralizedTime (`20240102030405Z`, AD's `20240102030405.0Z`).
fn generalized_time(text: &str) -> Option<DateTime<Utc>> {
    let digits = text.get(..14)?;
    if !text.ends_with('Z') {
        return None;
    }
    NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok().map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times() {
        let t = generalized_time("20240102030405Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-02T03:04:05+00:00");
        assert_eq!(generalized_time("20240102030405.0Z"), Some(t));
        assert_eq!(generalized_time("20240102030405+0100"), None);
        assert_eq!(generalized_time("2024"), None);
    }
}
