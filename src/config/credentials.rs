//! `[credentials."ID"]`: what the credentials socket
//! (`server.credentials_socket`) hands systemd for a unit's
//! `LoadCredential=ID:/run/lessor/credentials.sock`.

use std::collections::BTreeMap;

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Duration, RoleConfig, StaticAccountConfig};

/// `[credentials."ID"]`: one credential systemd may load for a unit, by the
/// id the unit's `LoadCredential=` names (the file name it gets in
/// `$CREDENTIALS_DIRECTORY`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The role whose fresh credential is delivered: a lease of its own
    /// for each start of the unit, renewed while the unit's processes run
    /// and revoked when they are gone (never past the role's `max_ttl`).
    pub role: Option<String>,
    /// Or the static account whose current credential is delivered (not a
    /// lease: it changes at the account's rotations).
    #[serde(rename = "static")]
    pub static_account: Option<String>,
    /// How it is written: `env` (`NAME='value'` lines, the variables
    /// `lessor creds --format env` prints, for `EnvironmentFile=` or a
    /// shell), `json` (the API's answer) or `password` (the password alone).
    #[serde(default)]
    pub format: CredentialFormat,
    /// Globs of the units that may load it (`billing-*.service`); no other
    /// unit gets it, whatever the policies say. The policies are checked
    /// too, with the unit as the caller (`systemd_unit` keys).
    pub units: Vec<String>,
    /// The lease's TTL, and how far each renewal moves it; the role's
    /// `default_ttl` when omitted.
    pub ttl: Option<Duration>,
}

/// How a delivered credential is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialFormat {
    #[default]
    Env,
    Json,
    Password,
}

/// Whether `id` can be a credential id: what systemd accepts as one (a
/// file name) in the characters a unit file writes without escapes.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// Checks every `[credentials."ID"]` against the roles and static
/// accounts it names. `server.credentials_socket` is not required with
/// them: under systemd the socket is passed in (`lessor-credentials.socket`).
pub(super) fn check(
    credentials: &BTreeMap<String, CredentialConfig>,
    roles: &BTreeMap<String, RoleConfig>,
    statics: &BTreeMap<String, StaticAccountConfig>,
    errors: &mut Vec<ConfigError>,
) {
    for (id, credential) in credentials {
        let key = format!("credentials.{id:?}");
        if !is_valid_id(id) {
            errors.push(ConfigError::new(
                &key,
                "a credential id may hold only letters, digits, '_', '-', '.' and '@', \
                 and may not start with '.'",
            ));
        }
        match (&credential.role, &credential.static_account) {
            (Some(_), Some(_)) | (None, None) => errors.push(ConfigError::new(
                &key,
                "give exactly one of `role` (a fresh credential per unit start) and `static` \
                 (a static account's current credential)",
            )),
            (Some(role), None) => match roles.get(role) {
                None => {
                    errors.push(ConfigError::new(format!("{key}.role"), format!("unknown role {role:?}")))
                }
                Some(config) => {
                    if let Some(ttl) = credential.ttl {
                        if ttl.as_std().is_zero() || ttl > config.max_ttl {
                            errors.push(ConfigError::new(
                                format!("{key}.ttl"),
                                format!(
                                    "{ttl} must be longer than 0s and at most role {role:?}'s max_ttl {}",
                                    config.max_ttl
                                ),
                            ));
                        }
                    }
                }
            },
            (None, Some(name)) => {
                if !statics.contains_key(name) {
                    errors.push(ConfigError::new(
                        format!("{key}.static"),
                        format!("unknown static account {name:?}"),
                    ));
                }
                if credential.ttl.is_some() {
                    errors.push(ConfigError::new(
                        format!("{key}.ttl"),
                        "only a role's credential has a lease to give a TTL",
                    ));
                }
            }
        }
        if credential.units.is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.units"),
                "name the units that may load it (globs such as \"billing-*.service\")",
            ));
        }
    }
}
