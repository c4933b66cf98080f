//! `[[policies]]` and `server.admins`: who may do what (DESIGN §4), checked
//! at load so a typo is an error rather than a silent deny.

use std::collections::{BTreeMap, HashSet};

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{is_valid_name, RoleConfig, StaticAccountConfig};
use crate::policy::{Admins, Matcher, Pattern, Permission, Policies, Policy};

/// `[[policies]]`: a set of identities and what they may do.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Names the policy in leases (`owner.policy`), logs and audit records.
    pub name: String,
    /// Who the policy is for: every key given must match the caller.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// `creds:<role glob>`, `static:<account glob>`, `rotate:<account glob>`
    /// or `admin`.
    pub allow: Vec<String>,
    /// The most live leases all callers under this policy may hold.
    pub max_leases: Option<usize>,
}

/// The `match` of a policy. Globs: `*`, `?`, `[…]`, `{a,b}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub uid: Option<u32>,
    /// User name glob.
    pub user: Option<String>,
    /// Primary or supplementary gid.
    pub gid: Option<u32>,
    /// Primary or supplementary group name glob.
    pub group: Option<String>,
    /// Executable path glob (`/proc/<pid>/exe`); `*` stays within a segment.
    pub exe: Option<String>,
    /// systemd unit glob (`web.service`, `run-*.scope`).
    pub systemd_unit: Option<String>,
    /// cgroup v2 path glob (`/system.slice/web.service`); `*` stays within
    /// a segment.
    pub cgroup: Option<String>,
}

/// An entry of `server.admins`: a uid or a user name.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AdminConfig {
    Uid(u32),
    User(String),
}

pub(super) fn validate(
    policies: &[PolicyConfig],
    admins: Option<&[AdminConfig]>,
    roles: &BTreeMap<String, RoleConfig>,
    statics: &BTreeMap<String, StaticAccountConfig>,
    errors: &mut Vec<ConfigError>,
) -> Policies {
    let mut compiled = Vec::new();
    let mut names = HashSet::new();
    for (i, policy) in policies.iter().enumerate() {
        let key = format!("policies[{i}]");
        if !is_valid_name(&policy.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("{:?}: a name may hold only letters, digits, '_' and '-'", policy.name),
            ));
            continue;
        }
        let key = format!("policies.{}", policy.name);
        if !names.insert(policy.name.clone()) {
            errors.push(ConfigError::new(&key, "a second policy has this name"));
            continue;
        }
        let mut pattern = |field: &str, text: &Option<String>, path: bool| {
            text.as_deref().and_then(|t| match Pattern::new(t, path) {
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{key}.match.{field}"), e));
                    None
                }
            })
        };
        let m = &policy.matches;
        let matcher = Matcher {
            uid: m.uid,
            user: pattern("user", &m.user, false),
            gid: m.gid,
            group: pattern("group", &m.group, false),
            exe: pattern("exe", &m.exe, true),
            systemd_unit: pattern("systemd_unit", &m.systemd_unit, false),
            cgroup: pattern("cgroup", &m.cgroup, true),
        };
        let m_given = [&m.user, &m.group, &m.exe, &m.systemd_unit, &m.cgroup].iter().any(|k| k.is_some())
            || m.uid.is_some()
            || m.gid.is_some();
        if !m_given {
            errors.push(ConfigError::new(
                format!("{key}.match"),
                "is empty: name at least one of uid, user, gid, group, exe, systemd_unit, cgroup",
            ));
        }
        if policy.allow.is_empty() {
            errors.push(ConfigError::new(format!("{key}.allow"), "is empty: the policy would grant nothing"));
        }
        let mut allow = Vec::new();
        for text in &policy.allow {
            let at = format!("{key}.allow");
            match Permission::parse(text) {
                Ok(permission) => {
                    let names_nothing = match &permission {
                        Permission::Creds(g) => (!roles.keys().any(|r| g.matches(r))).then_some("role"),
                        Permission::Static(g) | Permission::Rotate(g) => {
                            (!statics.keys().any(|s| g.matches(s))).then_some("static account")
                        }
                        Permission::Admin => None,
                    };
                    if let Some(kind) = names_nothing {
                        errors.push(ConfigError::new(at, format!("{text:?} names no configured {kind}")));
                    } else {
                        allow.push(permission);
                    }
                }
                Err(e) => errors.push(ConfigError::new(at, e)),
            }
        }
        if policy.max_leases == Some(0) {
            errors.push(ConfigError::new(format!("{key}.max_leases"), "must be at least 1"));
        }
        if m_given && matcher.is_empty() {
            continue; // its patterns were reported above
        }
        compiled.push(Policy { name: policy.name.clone(), matcher, allow, max_leases: policy.max_leases });
    }
    let admins = match admins {
        None => Admins::RootAndDaemon,
        Some(list) => {
            let mut uids = Vec::new();
            let mut users = Vec::new();
            for entry in list {
                match entry {
                    AdminConfig::Uid(uid) => uids.push(*uid),
                    AdminConfig::User(user) if !user.is_empty() => users.push(user.clone()),
                    AdminConfig::User(_) => {
                        errors.push(ConfigError::new("server.admins", "an empty user name matches nobody"))
                    }
                }
            }
            Admins::Listed { uids, users }
        }
    };
    Policies::new(compiled, admins)
}
