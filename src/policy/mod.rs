//! Who may do what, in one place: who a caller is ([`identity`]), the
//! `[[policies]]` that grant it permissions ([`rules`]), how many leases it
//! may hold ([`quota`]), and every check the broker, the rotator and the API
//! ask: issue a role, read or rotate a static account, touch a lease, act
//! as an operator.
//!
//! Default deny: a caller gets what a policy matching it allows, and
//! nothing else. Admins (root and the daemon's own user, unless
//! `server.admins` says otherwise, plus whoever a policy grants `admin`)
//! may do everything. Without any `[[policies]]` only admins may issue;
//! `serve --dev` opens issuance and static reads to every local user.
//! A lease belongs to the uid and the policy that obtained it: only they
//! (or an admin) may read, renew, revoke or watch it.

mod build;
pub mod identity;
pub mod quota;
pub mod rules;

use std::sync::Arc;

pub use identity::Identity;
pub use rules::{AdminCheck, Admins, Matcher, Pattern, Permission, Policy};

use crate::lease::{Lease, Owner};

/// The compiled access rules of a config. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Policies {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policies: Vec<Arc<Policy>>,
    admins: Admins,
    /// `serve --dev`: every local user may issue and read static accounts.
    open: bool,
    /// This daemon's node, when nodes share a store: a lease's owner is a
    /// uid on the node that issued it.
    node: Option<Arc<str>>,
}

impl Default for Policies {
    fn default() -> Self {
        Self::new(Vec::new(), Admins::RootAndDaemon)
    }
}

impl Policies {
    pub fn new(policies: Vec<Policy>, admins: Admins) -> Self {
        let policies = policies.into_iter().map(Arc::new).collect();
        Self { inner: Arc::new(Inner { policies, admins, open: false, node: None }) }
    }

    /// The same rules on node `node` of a shared store: callers here own
    /// the leases issued here, not those of the same uid on other hosts.
    pub fn on_node(&self, node: &str) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                policies: inner.policies.clone(),
                admins: inner.admins.clone(),
                open: inner.open,
                node: Some(node.into()),
            }),
        }
    }

    /// The same rules, with issuance open to every local user (`--dev`).
    pub fn opened(&self) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                policies: inner.policies.clone(),
                admins: inner.admins.clone(),
                open: true,
                node: inner.node.clone(),
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.policies.is_empty()
    }

    pub fn is_open(&self) -> bool {
        self.inner.open
    }

    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.inner.policies.iter().map(|p| &**p)
    }

    /// A systemd unit asking for a credential through `LoadCredential=`
    /// (the credentials socket), whose cgroup is `cgroup` where it was
    /// found. The service manager asks on its behalf, so the unit is the
    /// whole identity: no uid (`u32::MAX`, which no process has), so no
    /// `uid`/`user` policy and no default admin matches it, and on the
    /// host. Its leases record the unit they are delivered to.
    pub fn unit_caller(&self, unit: &str, cgroup: Option<String>) -> Caller {
        let identity = Identity {
            uid: u32::MAX,
            gid: u32::MAX,
            systemd_unit: Some(unit.to_string()),
            cgroup,
            ..Identity::default()
        };
        Caller { unit: Some(unit.into()), ..self.caller(identity) }
    }

    /// The caller with this identity: the policies it matches, once.
    pub fn caller(&self, identity: Identity) -> Caller {
        let matched: Vec<Arc<Policy>> =
            self.inner.policies.iter().filter(|p| p.matcher.matches(&identity)).cloned().collect();
        let check = self.inner.admins.check(&identity);
        let by_policy = matched.iter().any(|p| p.grants_admin());
        let admin = check == AdminCheck::Admin || by_policy;
        let not_on_host = match check {
            AdminCheck::NotOnHost(why) if !by_policy => Some(why),
            _ => None,
        };
        Caller {
            not_on_host,
            uid: identity.uid,
            gid: identity.gid,
            pid: identity.pid,
            admin,
            open: self.inner.open,
            configured: !self.inner.policies.is_empty(),
            node: self.inner.node.clone(),
            matched: matched.into(),
            identity: Arc::new(identity),
            unit: None,
        }
    }
}

/// Who is calling, from the socket's peer credentials, and what the
/// policies grant it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    identity: Arc<Identity>,
    /// The policies whose `match` the caller meets, in config order.
    matched: Arc<[Arc<Policy>]>,
    admin: bool,
    /// Why a caller `server.admins` names (root, by default) is not an
    /// admin here: it is not on the host.
    not_on_host: Option<String>,
    open: bool,
    /// Whether any `[[policies]]` are configured, for the messages.
    configured: bool,
    /// The node the caller's socket is on, when nodes share a store.
    node: Option<Arc<str>>,
    /// The systemd unit a credential is delivered to (`unit_caller`).
    unit: Option<Arc<str>>,
}

/// What a policy granted for an issuance: the policy the lease is owned
/// under (none for an admin or `--dev` without a granting policy).
#[derive(Debug, Clone)]
pub struct Grant {
    pub policy: Option<Arc<Policy>>,
}

/// A permission check that failed (403). The message names the caller and
/// the permission it lacks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    pub message: String,
}

impl Caller {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The systemd unit a credential is delivered to (`unit_caller`).
    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    /// Who a username is made for: the identity placeholders of a
    /// role's `username_template`.
    pub fn subject(&self) -> lessor_plugin::names::Subject<'_> {
        let container = self.identity.container.as_deref();
        lessor_plugin::names::Subject {
            container: container.map(|c| c.name.as_str()),
            k8s_namespace: container.and_then(|c| c.k8s_namespace()),
            unit: self.unit.as_deref().or(self.identity.systemd_unit.as_deref()),
            user: self.identity.user.as_deref(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Why `server.admins` (root and the daemon's user, by default) would
    /// make this caller an admin on the host but does not where it is.
    pub fn not_admin_because(&self) -> Option<&str> {
        self.not_on_host.as_deref()
    }

    /// The names of the policies the caller matches.
    pub fn policy_names(&self) -> Vec<&str> {
        self.matched.iter().map(|p| p.name.as_str()).collect()
    }

    /// Operator actions: force, revoke by prefix, tidy, rotate-root,
    /// revoke-sessions.
    pub fn require_admin(&self, action: &str) -> Result<(), Denied> {
        if self.admin {
            return Ok(());
        }
        let elsewhere = match &self.not_on_host {
            Some(why) => format!("; {} is one only on the host, and {why}", self.who()),
            None => String::new(),
        };
        Err(Denied {
            message: format!(
                "{} may not {action}: it is for admins (root and the daemon's own user on the host \
                 unless server.admins says otherwise, or a policy granting \"admin\"){elsewhere}",
                self.who()
            ),
        })
    }

    /// May the caller read `GET /v1/metrics` (counts over every lease)?
    pub fn may_read_metrics(&self) -> Result<(), Denied> {
        if self.admin || self.matched.iter().any(|p| p.grants(|w| matches!(w, Permission::Metrics))) {
            return Ok(());
        }
        Err(self.lacks("metrics", "read the metrics"))
    }

    /// May the caller issue credentials of `role`?
    pub fn may_issue(&self, role: &str) -> Result<Grant, Denied> {
        let policy =
            self.matched.iter().find(|p| p.grants(|w| matches!(w, Permission::Creds(g) if g.matches(role))));
        match policy {
            Some(policy) => Ok(Grant { policy: Some(policy.clone()) }),
            None if self.admin || self.open => Ok(Grant { policy: None }),
            None => Err(self.lacks(&format!("creds:{role}"), &format!("issue role {role:?}"))),
        }
    }

    /// May the caller read static account `name`'s credential?
    pub fn may_read_static(&self, name: &str) -> Result<(), Denied> {
        let granted = self.admin
            || self.open
            || self
                .matched
                .iter()
                .any(|p| p.grants(|w| matches!(w, Permission::Static(g) if g.matches(name))));
        if granted {
            return Ok(());
        }
        Err(self.lacks(&format!("static:{name}"), &format!("read static account {name:?}")))
    }

    /// May the caller ask for a rotation of static account `name`?
    pub fn may_rotate(&self, name: &str) -> Result<(), Denied> {
        let granted = self.admin
            || self
                .matched
                .iter()
                .any(|p| p.grants(|w| matches!(w, Permission::Rotate(g) if g.matches(name))));
        if granted {
            return Ok(());
        }
        Err(self.lacks(&format!("rotate:{name}"), &format!("rotate static account {name:?}")))
    }

    /// May the caller read, renew, revoke or watch `lease`? Its owner may
    /// (the same uid on the node that issued it, still matching the policy
    /// the lease was issued under), and admins may, from any node. A lease
    /// issued under no policy (to an admin) is for admins alone, except
    /// with `--dev`.
    pub fn may_touch(&self, lease: &Lease) -> bool {
        let same_node = match (&lease.owner.node, &self.node) {
            (Some(issued_on), Some(here)) => **issued_on == **here,
            _ => true,
        };
        // A lease issued under no policy was issued to an admin (or, with
        // `--dev`, to anyone): the same uid alone is not its owner, or root
        // in a container would own the host's root's leases.
        let same_grant = match &lease.owner.policy {
            Some(name) => self.matched.iter().any(|p| &p.name == name),
            None => self.open,
        };
        // A unit's lease is that unit's alone (its owner uid is none).
        let same_unit = lease.owner.unit.as_deref() == self.unit.as_deref();
        self.admin || (lease.owner.uid == self.uid && same_node && same_grant && same_unit)
    }

    /// The owner a lease issued now under `grant` records.
    pub(crate) fn owner(&self, grant: &Grant) -> Owner {
        Owner {
            uid: self.uid,
            gid: self.gid,
            pid: self.pid,
            policy: grant.policy.as_ref().map(|p| p.name.clone()),
            node: self.node.as_deref().map(str::to_string),
            unit: self.unit.as_deref().map(str::to_string),
        }
    }

    /// "uid 65534 (nobody)" for messages.
    pub fn who(&self) -> String {
        if let Some(unit) = &self.unit {
            return format!("unit {unit}");
        }
        match &self.identity.user {
            Some(user) => format!("uid {} ({user})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    fn lacks(&self, permission: &str, what: &str) -> Denied {
        let why = if self.configured {
            match self.policy_names().as_slice() {
                [] => "no [[policies]] entry matches it".to_string(),
                names => format!("none of the policies matching it ({}) grants that", names.join(", ")),
            }
        } else {
            "no [[policies]] are configured, so only admins may; see the manual's \"Access and identity\" chapter (docs/src/access.md)".into()
        };
        Denied {
            message: format!("{} may not {what}: it needs permission {permission:?}, and {why}", self.who()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseState;

    fn lease_of(uid: u32, node: Option<&str>) -> Lease {
        let now = chrono::Utc::now();
        Lease {
            id: crate::lease::new_id("app"),
            role: "app".into(),
            connection: "pg".into(),
            username: "v_app_x".into(),
            state: LeaseState::Active,
            issued_at: now,
            expires_at: now,
            max_expires_at: now,
            renewable: true,
            attempts: 0,
            last_error: None,
            owner: Owner {
                uid,
                gid: uid,
                pid: None,
                policy: Some("apps".into()),
                node: node.map(str::to_string),
                unit: None,
            },
            plugin_data: None,
            revoked_at: None,
            idempotency: None,
        }
    }

    #[test]
    fn a_lease_is_its_uid_on_its_node_and_admins_touch_any() {
        let apps = || Policy {
            name: "apps".into(),
            matcher: Matcher { gid: Some(4242), ..Matcher::default() },
            allow: Vec::new(),
            max_leases: None,
        };
        let policies = Policies::new(vec![apps()], Admins::RootAndDaemon).on_node("web-1");
        let user = policies.caller(Identity { uid: 4242, gid: 4242, ..Identity::default() });
        let admin = policies.caller(Identity { uid: 0, gid: 0, ..Identity::default() });
        assert!(user.may_touch(&lease_of(4242, Some("web-1"))), "its own, issued here");
        assert!(
            !user.may_touch(&lease_of(4242, Some("web-2"))),
            "the same uid on another host is someone else"
        );
        assert!(!user.may_touch(&lease_of(4243, Some("web-1"))), "another uid");
        assert!(admin.may_touch(&lease_of(4242, Some("web-2"))), "admins, from any node");
        assert_eq!(user.owner(&Grant { policy: None }).node.as_deref(), Some("web-1"));
        // A store of one node records no node: ownership is the uid alone.
        let single = Policies::new(vec![apps()], Admins::RootAndDaemon).caller(Identity {
            uid: 4242,
            gid: 4242,
            ..Identity::default()
        });
        assert!(single.may_touch(&lease_of(4242, None)));
        assert_eq!(single.owner(&Grant { policy: None }).node, None);
        // An admin's lease (issued under no policy) is not the same uid's
        // elsewhere: root in a container is uid 0 too.
        let admins_lease =
            Lease { owner: Owner { policy: None, ..lease_of(0, None).owner }, ..lease_of(0, None) };
        let confined_root = Policies::new(vec![], Admins::RootAndDaemon).caller(Identity {
            uid: 0,
            confined: Some("it runs in another pid namespace than the daemon".into()),
            ..Identity::default()
        });
        assert!(!confined_root.is_admin());
        assert!(!confined_root.may_touch(&admins_lease));
        assert!(confined_root.require_admin("tidy").unwrap_err().message.contains("only on the host"));
        let host_root =
            Policies::new(vec![], Admins::RootAndDaemon).caller(Identity { uid: 0, ..Identity::default() });
        assert!(host_root.is_admin() && host_root.may_touch(&admins_lease));
    }
}
