//! Vault's lease ids and prefixes, and lessor's.
//!
//! A Vault lease id is the path that issued it followed by lessor's own id:
//! `database/creds/app_ro/<random>` is lessor's `app_ro/<random>`, and
//! `aws/creds/deploy/<random>` (or `aws/sts/deploy/<random>`) is
//! `deploy/<random>`. The mapping is one to one, so nothing about it is
//! stored. Both forms are accepted wherever a lease id is.

use crate::lease::LeaseId;

/// A secrets engine lessor answers for: where its roles live in Vault's
/// path space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// `database/`: roles and static accounts of the PostgreSQL and MySQL
    /// plugins.
    Database,
    /// `aws/`: roles and static accounts of the AWS plugin.
    Aws,
    /// `ldap/`: roles and static accounts of the LDAP plugin (Vault's LDAP
    /// secrets engine).
    Ldap,
}

impl Mount {
    /// The mount serving a plugin's roles; `None` for a plugin Vault has no
    /// engine path for here.
    pub fn of_plugin(plugin: &str) -> Option<Self> {
        match plugin {
            "postgres" | "mysql" | "redis" => Some(Self::Database),
            "aws" => Some(Self::Aws),
            "ldap" => Some(Self::Ldap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Aws => "aws",
            Self::Ldap => "ldap",
        }
    }

    /// The paths under this mount that issue leases (`creds`, and for AWS
    /// also `sts`).
    fn issuing_paths(self) -> &'static [&'static str] {
        match self {
            Self::Database | Self::Ldap => &["creds"],
            Self::Aws => &["creds", "sts"],
        }
    }
}

/// The Vault form of a lease id issued through `mount/path/`.
pub fn vault_id(mount: Mount, path: &str, id: &LeaseId) -> String {
    format!("{}/{path}/{id}", mount.as_str())
}

/// The issuing path a Vault-style lease id or prefix starts with
/// (`database/creds/`), and the rest after it.
fn split_issuing(raw: &str) -> Option<(Mount, &str)> {
    [Mount::Database, Mount::Aws, Mount::Ldap].into_iter().find_map(|mount| {
        mount.issuing_paths().iter().find_map(|path| {
            raw.strip_prefix(mount.as_str())?
                .strip_prefix('/')?
                .strip_prefix(path)?
                .strip_prefix('/')
                .map(|rest| (mount, rest))
        })
    })
}

/// A lease id as a client sent it: Vault's form or lessor's. Returns the
/// mount the Vault form named (the caller checks it against the role's)
/// and lessor's id; `None` when it is neither.
pub fn parse(raw: &str) -> Option<(Option<Mount>, LeaseId)> {
    let raw = raw.trim_matches('/');
    match split_issuing(raw) {
        Some((mount, rest)) => LeaseId::parse(rest).map(|id| (Some(mount), id)),
        None => LeaseId::parse(raw).map(|id| (None, id)),
    }
}

/// A prefix as a folder: as in Vault, one that does not end in `/` is a
/// whole path segment (`database/creds/app` means `database/creds/app/`,
/// not `app_ro` too). Leading slashes go; "" stays "" (everything).
pub fn folder(prefix: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// A prefix in Vault's form: one under `database/` or `aws/` (or "") is
/// already; one in lessor's (`app_ro/`) is put under the role's mount's
/// `creds/`, so both forms select the same leases.
pub fn in_vault_form(prefix: &str, mount: Mount) -> String {
    let prefix = folder(prefix);
    let root = prefix.split('/').next().unwrap_or("");
    if prefix.is_empty() || ["database", "aws", "ldap"].contains(&root) {
        prefix
    } else {
        format!("{}/creds/{prefix}", mount.as_str())
    }
}

/// What a Vault prefix (`database/creds/app_ro`, `aws/`, `database/creds/`)
/// selects among lessor's leases of one role: the issuing path it is under
/// (`creds`, `sts`) and the lessor prefix of the leases it selects (every
/// lease of the role, or those under a prefix within it), or `None`.
pub fn role_prefix(vault_prefix: &str, mount: Mount, role: &str) -> Option<(&'static str, String)> {
    let prefix = folder(vault_prefix);
    mount.issuing_paths().iter().find_map(|path| {
        let whole_role = format!("{}/{path}/{role}/", mount.as_str());
        if whole_role.starts_with(&prefix) {
            Some((*path, format!("{role}/")))
        } else {
            prefix.strip_prefix(&whole_role).map(|within| (*path, format!("{role}/{within}")))
        }
    })
}

/// The next path segment of `id` after `prefix`, as Vault's `LIST
/// sys/leases/lookup/<prefix>` shows it: `ro/` for a folder, the random
/// part for a lease. `None` when `id` is not under `prefix`.
pub fn next_key<'a>(prefix: &str, id: &'a str) -> Option<&'a str> {
    let rest = id.strip_prefix(prefix)?;
    if rest.is_empty() {
        return None;
    }
    Some(match rest.find('/') {
        Some(slash) => &rest[..=slash],
        None => rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_a_lease_id_map_to_lessors() {
        let id = LeaseId::parse("app_ro/abc123").unwrap();
        assert_eq!(vault_id(Mount::Database, "creds", &id), "database/creds/app_ro/abc123");
        assert_eq!(parse("database/creds/app_ro/abc123"), Some((Some(Mount::Database), id.clone())));
        assert_eq!(parse("app_ro/abc123"), Some((None, id.clone())));
        assert_eq!(parse("aws/sts/app_ro/abc123"), Some((Some(Mount::Aws), id.clone())));
        assert_eq!(parse("aws/creds/app_ro/abc123/"), Some((Some(Mount::Aws), id.clone())));
        assert_eq!(parse("ldap/creds/app_ro/abc123"), Some((Some(Mount::Ldap), id)));
        for bad in
            ["database/creds/app_ro", "database/static-creds/x/y", "kv/creds/a/b", "database/creds/a/b/c", ""]
        {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_vault_prefix_selects_whole_roles_or_leases_within_one() {
        let db = Mount::Database;
        for (prefix, wanted) in [
            ("database/creds/app_ro", Some("app_ro/")),
            ("database/creds/app_ro/", Some("app_ro/")),
            ("database/creds/app_ro/ab", Some("app_ro/ab/")),
            ("database/creds/", Some("app_ro/")),
            ("database/creds", Some("app_ro/")),
            ("database/", Some("app_ro/")),
            ("database", Some("app_ro/")),
            ("", Some("app_ro/")),
            ("database/creds/app", None),
            ("database/creds/app_ro_x", None),
            ("aws/", None),
            ("database/static-creds/", None),
        ] {
            let got = role_prefix(prefix, db, "app_ro");
            assert_eq!(got.as_ref().map(|(_, p)| p.as_str()), wanted, "{prefix:?}");
            assert!(got.is_none_or(|(path, _)| path == "creds"));
        }
        assert_eq!(role_prefix("aws/sts/deploy", Mount::Aws, "deploy"), Some(("sts", "deploy/".to_string())));
        assert_eq!(role_prefix("aws/", Mount::Aws, "deploy"), Some(("creds", "deploy/".to_string())));
        // lessor's form of a prefix selects the same leases.
        assert_eq!(in_vault_form("app_ro/", db), "database/creds/app_ro/");
        assert_eq!(in_vault_form("app_ro", db), "database/creds/app_ro/");
        assert_eq!(in_vault_form("database/creds/app_ro", db), "database/creds/app_ro/");
        assert_eq!(in_vault_form("", db), "");
    }

    #[test]
    fn list_keys_are_the_next_segment() {
        assert_eq!(next_key("database/creds/", "database/creds/ro/abc"), Some("ro/"));
        assert_eq!(next_key("database/creds/ro/", "database/creds/ro/abc"), Some("abc"));
        assert_eq!(next_key("", "database/creds/ro/abc"), Some("database/"));
        assert_eq!(next_key("aws/", "database/creds/ro/abc"), None);
    }
}
