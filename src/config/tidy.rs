//! A connection's `tidy*` keys, checked into [`TidySettings`] (the sweep
//! itself is `crate::tidy`).

use lessor_plugin::ConfigError;
use tracing::warn;

use super::{ConnectionConfig, Duration};

/// The default `tidy_grace`: longer than any issuance takes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);
/// The default `tidy_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// A connection's validated tidy settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TidySettings {
    /// The username prefix lessor owns on the backend.
    pub prefix: String,
    /// How old an uncovered user must be before it is dropped.
    pub grace: Duration,
    /// How often the sweep runs.
    pub interval: Duration,
}

impl TidySettings {
    /// Checks a connection's `tidy*` keys; `key` is `connections.NAME`.
    /// `Ok(None)` when tidy is off. (A prefix a static account's username
    /// starts with is refused where static accounts are checked.)
    pub fn from_config(
        key: &str,
        connection: &ConnectionConfig,
    ) -> Result<Option<TidySettings>, ConfigError> {
        if !connection.tidy {
            if connection.tidy_prefix.is_some() {
                // Harmless, but probably a config that meant to turn tidy on.
                warn!(connection = key, "tidy_prefix is set but tidy = false: no sweep runs");
            }
            return Ok(None);
        }
        let prefix = connection.tidy_prefix.as_deref().ok_or_else(|| {
            ConfigError::new(
                format!("{key}.tidy_prefix"),
                "required when tidy = true: the username prefix lessor owns on this backend, e.g. \"v_\"",
            )
        })?;
        if prefix.is_empty()
            || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError::new(
            format!("{key}.tidy_prefix"),
            format!(
                "{prefix:?} must be non-empty and use only a-z, 0-9 and _ (the characters of the usernames lessor makes)"
            ),
        ));
        }
        if let Some(admin) = connection.url.as_deref().and_then(admin_user) {
            if admin.starts_with(prefix) {
                return Err(ConfigError::new(
                    format!("{key}.tidy_prefix"),
                    format!(
                        "{prefix:?} matches the admin user {admin:?} of this connection: tidy would drop it"
                    ),
                ));
            }
        }
        Ok(Some(TidySettings {
            prefix: prefix.to_string(),
            grace: connection.tidy_grace,
            interval: connection.tidy_interval,
        }))
    }
}

/// The user a connection URL logs in as: `scheme://USER[:…]@host…` or a
/// PostgreSQL keyword string `… user=USER …`.
fn admin_user(url: &str) -> Option<String> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let (userinfo, _) = authority.rsplit_once('@')?;
        let user = userinfo.split(':').next().unwrap_or("");
        let decoded = percent_encoding::percent_decode_str(user).decode_utf8().ok()?;
        return (!decoded.is_empty()).then(|| decoded.into_owned());
    }
    url.split_whitespace()
        .find_map(|pair| pair.strip_prefix("user="))
        .map(|u| u.trim_matches('\'').to_string())
        .filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_users_are_read_from_urls() {
        assert_eq!(admin_user("postgres://lessor_admin@db:5432/app").as_deref(), Some("lessor_admin"));
        assert_eq!(admin_user("mysql://v_admin@127.0.0.1:3306/").as_deref(), Some("v_admin"));
        assert_eq!(admin_user("mysql://a%5Fb@h/").as_deref(), Some("a_b"));
        assert_eq!(admin_user("host=db user=v_admin dbname=app").as_deref(), Some("v_admin"));
        assert_eq!(admin_user("postgres://db/app"), None);
    }
}
