//! Compiling `[[policies]]` and `server.admins` from their config
//! (`crate::config::policies`) into [`Policies`].

use std::collections::HashSet;

use lessor_plugin::ConfigError;

use super::rules::ContainerMatch;
use super::{Admins, Matcher, Pattern, Permission, Policies, Policy};
use crate::config::{is_valid_name, AdminConfig, MatchConfig, PolicyConfig};

const MATCH_KEYS: &str =
    "uid, user, gid, group, exe, systemd_unit, user_unit, cgroup, host, container_name, \
                          image, image_digest, label.<key>, k8s_namespace, k8s_pod, k8s_service_account, \
                          k8s_container";

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
        container: ContainerMatch {
            name: pattern("container_name", &m.container_name, false),
            image: pattern("image", &m.image, true),
            image_digest: pattern("image_digest", &m.image_digest, false),
            labels: m
                .label
                .iter()
                .filter_map(|(label, glob)| {
                    pattern(&format!("label.{label}"), &Some(glob.clone()), false).map(|p| (label.clone(), p))
                })
                .collect(),
            k8s_namespace: pattern("k8s_namespace", &m.k8s_namespace, false),
            k8s_pod: pattern("k8s_pod", &m.k8s_pod, false),
            k8s_service_account: pattern("k8s_service_account", &m.k8s_service_account, false),
            k8s_container: pattern("k8s_container", &m.k8s_container, false),
        },
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

impl Policies {
    /// Compiles `[[policies]]` and `server.admins`. A permission that names
    /// no role or static account among `roles` and `statics` (the names the
    /// config declares) is an error, as is every bad pattern; all are
    /// reported, each at its dotted key.
    pub fn from_config<'a>(
        policies: &[PolicyConfig],
        admins: Option<&[AdminConfig]>,
        roles: impl Iterator<Item = &'a String> + Clone,
        statics: impl Iterator<Item = &'a String> + Clone,
    ) -> Result<Policies, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let policies = compile(policies, admins, roles, statics, &mut errors);
        if errors.is_empty() {
            Ok(policies)
        } else {
            Err(errors)
        }
    }
}

fn compile<'a>(
    policies: &[PolicyConfig],
    admins: Option<&[AdminConfig]>,
    roles: impl Iterator<Item = &'a String> + Clone,
    statics: impl Iterator<Item = &'a String> + Clone,
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
                        Permission::Creds(g) => (!roles.clone().any(|r| g.matches(r))).then_some("role"),
                        Permission::Static(g) | Permission::Rotate(g) => {
                            (!statics.clone().any(|s| g.matches(s))).then_some("static account")
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
