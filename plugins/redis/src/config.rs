//! The plugin's keys of `[connections.NAME]` and `[roles.NAME]`, checked
//! at load.

use lessor_plugin::options::parse_table;
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

/// `[connections.NAME]` keys of the Redis plugin, beside the broker's
/// (`url = "redis://lessor_admin@127.0.0.1:6379"` or `rediss://…` for TLS,
/// the admin's password in `password_file` or `password_env`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConnectionOptions {
    /// Every other server that must hold the same users, e.g. the other
    /// shards and replicas of a Redis Cluster (which propagate no ACL
    /// change): `["redis://10.0.0.2:6379", …]`, with the scheme, admin user
    /// and password of `url`. Each change is made on every node, and fails
    /// (a revocation is retried) unless every node took it.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// (rediss://) PEM CA certificates the server's certificate must chain
    /// to; the system's roots when absent. The host name is always checked.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// (rediss://) A PEM client certificate, for servers that ask for one.
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// (rediss://) Its key (mode 0600 or stricter).
    pub tls_client_key_file: Option<std::path::PathBuf>,
}

/// `[roles.NAME]` keys of the Redis plugin.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisRoleOptions {
    /// ACL rules the user gets, after `reset resetchannels -@all` (so
    /// nothing else is granted), e.g. `["~cache:*", "+@read"]`. Key and
    /// channel patterns (`~`, `%R~`, `%W~`, `&`), command rules (`+`, `-`,
    /// `allcommands`, `nocommands`, `allkeys`, `allchannels`) and selectors
    /// (`(…)`); never a password, `on`/`off`, `nopass` or a reset, which
    /// lessor owns.
    #[serde(default)]
    pub acl_rules: Vec<String>,
}

/// A role's checked settings.
#[derive(Debug, Clone)]
pub struct RedisRole {
    pub acl_rules: Vec<String>,
}

/// Rules lessor sets itself: a role may not name them.
const OWNED: &[&str] = &["on", "off", "nopass", "reset", "resetpass", "resetkeys", "resetchannels"];

pub fn parse_role(role: &str, options: &toml::Table) -> Result<RedisRole, ConfigError> {
    let prefix = format!("roles.{role}");
    let raw: RedisRoleOptions = parse_table(options, &prefix)?;
    let key = format!("{prefix}.acl_rules");
    if raw.acl_rules.is_empty() {
        return Err(ConfigError::new(
            key,
            "is empty: the user would be granted nothing; list its rules, e.g. [\"~cache:*\", \"+@read\"]",
        ));
    }
    for (i, rule) in raw.acl_rules.iter().enumerate() {
        let at = format!("{key}[{i}]");
        if rule.is_empty() || rule.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(at, format!("{rule:?}: a rule is one word without spaces")));
        }
        if rule.starts_with(['>', '<', '#', '!']) {
            // Not echoed: it may be a password.
            return Err(ConfigError::new(
                at,
                "a password rule (>, <, #, !) is lessor's to set, not a role's",
            ));
        }
        if OWNED.contains(&rule.to_ascii_lowercase().as_str()) {
            return Err(ConfigError::new(
                at,
                format!("{rule:?}: on/off, nopass and resets are lessor's to set, not a role's"),
            ));
        }
        let known = rule.starts_with(['~', '&', '+', '-', '%', '('])
            || matches!(
                rule.to_ascii_lowercase().as_str(),
                "allkeys" | "allchannels" | "allcommands" | "nocommands"
            );
        if !known {
            return Err(ConfigError::new(
                at,
                format!(
                    "{rule:?} is not an ACL rule this plugin takes (key ~…, channel &…, command +…/-…, \
                     %R~/%W~, selectors (…), allkeys, allchannels, allcommands, nocommands)"
                ),
            ));
        }
    }
    Ok(RedisRole { acl_rules: raw.acl_rules })
}

pub fn parse_connection(name: &str, options: &toml::Table) -> Result<RedisConnectionOptions, ConfigError> {
    parse_table(options, &format!("connections.{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(text: &str) -> Result<RedisRole, ConfigError> {
        parse_role("cache", &text.parse().unwrap())
    }

    #[test]
    fn rules_are_checked_and_errors_name_the_key() {
        assert_eq!(role(r#"acl_rules = ["~cache:*", "+@read"]"#).unwrap().acl_rules, ["~cache:*", "+@read"]);
        for (text, wanted) in [
            ("acl_rules = []", "roles.cache.acl_rules: is empty"),
            (r#"acl_rules = [">secret"]"#, "roles.cache.acl_rules[0]"),
            (r#"acl_rules = ["+@read", "nopass"]"#, "roles.cache.acl_rules[1]"),
            (r#"acl_rules = ["+get set"]"#, "without spaces"),
            (r#"acl_rules = ["whatever"]"#, "is not an ACL rule"),
            (r#"acl_rule = ["+get"]"#, "roles.cache.acl_rule"),
        ] {
            let e = role(text).unwrap_err().to_string();
            assert!(e.contains(wanted), "{text}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
