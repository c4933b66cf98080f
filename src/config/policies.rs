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
    /// systemd unit glob (`web.service`, `run-*.scope`): a unit of the
    /// system manager. A unit a user made below its own
    /// `user@UID.service` is never one (see `user_unit`).
    pub systemd_unit: Option<String>,
    /// Glob of a unit of the caller's own user manager (below
    /// `user@UID.service`, UID being the caller's uid): the user names it,
    /// so pair it with `user` or `uid`.
    pub user_unit: Option<String>,
    /// cgroup v2 path glob (`/system.slice/web.service`); `*` stays within
    /// a segment. Only the part of the path root made counts: a delegated
    /// subtree's own directories are left out.
    pub cgroup: Option<String>,
    /// `true`: only callers on the host (the daemon's pid and user
    /// namespaces, outside any container's cgroup); `false`: only callers
    /// elsewhere (in a container).
    pub host: Option<bool>,
}

/// An entry of `server.admins`: a uid, a user name, or a table of the
/// same keys as a policy's `match` (`{ user = "root", cgroup =
/// "/system.slice/*" }`). Each holds on the host only unless it says
/// `host = false`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AdminConfig {
    Uid(u32),
    User(String),
    Match(MatchConfig),
}

const MATCH_KEYS: &str = "uid, user, gid, group, exe, systemd_unit, user_unit, cgroup, host";

/// Compiles a `match` table; errors go under `key`. `None` when it names
/// nothing (reported) or a pattern was bad (reported).
fn matcher(m: &MatchConfig, key: &str, errors: &mut Vec<ConfigError>) -> Option<Matcher> {
    let before = errors.len();
    let mut pattern = |field: &str, text: &Option<String>, path: bool| {
        text.as_deref().and_then(|t| match Pattern::new(t, path) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(ConfigError::new(format!("{key}.{field}"), e));
                None
            }
        })
    };
    let matcher = Matcher {
        uid: m.uid,
        user: pattern("user", &m.user, false),
        gid: m.gid,
        group: pattern("group", &m.group, false),
        exe: pattern("exe", &m.exe, true),
        systemd_unit: pattern("systemd_unit", &m.systemd_unit, false),
        user_unit: pattern("user_unit", &m.user_unit, false),
        cgroup: pattern("cgroup", &m.cgroup, true),
        host: m.host,
    };
    if errors.len() > before {
        return None;
    }
    if matcher.is_empty() {
        errors.push(ConfigError::new(key, format!("is empty: name at least one of {MATCH_KEYS}")));
        return None;
    }
    Some(matcher)
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
        let matcher = matcher(&policy.matches, &format!("{key}.match"), errors);
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
                        Permission::Admin | Permission::Metrics => None,
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
        let Some(matcher) = matcher else { continue }; // reported above
        compiled.push(Policy { name: policy.name.clone(), matcher, allow, max_leases: policy.max_leases });
    }
    let admins = match admins {
        None => Admins::RootAndDaemon,
        Some(list) => {
            let mut entries = Vec::new();
            for (i, entry) in list.iter().enumerate() {
                let key = format!("server.admins[{i}]");
                let m = match entry {
                    AdminConfig::Uid(uid) => Some(Matcher { uid: Some(*uid), ..Matcher::default() }),
                    AdminConfig::User(user) if user.is_empty() => {
                        errors.push(ConfigError::new(key, "an empty user name matches nobody"));
                        None
                    }
                    AdminConfig::User(user) => Pattern::new(&globset::escape(user), false)
                        .map(|p| Matcher { user: Some(p), ..Matcher::default() })
                        .map_err(|e| errors.push(ConfigError::new(&key, e)))
                        .ok(),
                    AdminConfig::Match(m) => matcher(m, &key, errors),
                };
                entries.extend(m);
            }
            Admins::Listed(entries)
        }
    };
    Policies::new(compiled, admins)
}
