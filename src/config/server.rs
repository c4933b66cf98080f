//! `[server]`: the daemon itself (socket, store, audit log, limits, admins).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{AdminConfig, Duration};

/// `[server]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Path of the Unix socket the API listens on. Overridden by `--socket`
    /// or `LESSOR_SOCKET`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Permissions of the socket file, in octal.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Where leases are kept: `sqlite:///absolute/path.db` or
    /// `sqlite://relative/path.db`.
    #[serde(default = "default_store")]
    pub store: String,
    /// Audit log path (hash-chained JSON lines, fsync'd before each answer).
    pub audit_log: Option<PathBuf>,
    /// Who is an admin by uid or user name, replacing the default (root
    /// and the daemon's own user). `[]`: admins only through a policy
    /// granting `admin`.
    pub admins: Option<Vec<AdminConfig>>,
    /// Key file for sealing static-account passwords in the store: 32
    /// random bytes, raw, as 64 hex characters or as base64. Required with
    /// `static_accounts`; refused when group or others can read it.
    pub seal_key_file: Option<PathBuf>,
    /// The longest a request may take before it is answered 503.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long revoked leases stay visible before they are purged.
    #[serde(default = "default_revoked_retention")]
    pub revoked_retention: Duration,
    /// Serve the Vault-compatible routes (`/v1/database/…`, `/v1/aws/…`,
    /// `/v1/sys/leases/…`) beside lessor's own, so the `bao`/`vault` CLI,
    /// hvac and OpenBao Agent work unchanged. The same identity and
    /// permission checks apply to both.
    #[serde(default = "default_vault_api")]
    pub vault_api: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            store: default_store(),
            audit_log: None,
            admins: None,
            seal_key_file: None,
            request_timeout: default_request_timeout(),
            max_body_bytes: default_max_body_bytes(),
            revoked_retention: default_revoked_retention(),
            vault_api: default_vault_api(),
        }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/lessor/lessor.sock")
}
fn default_socket_mode() -> String {
    "0660".into()
}
fn default_store() -> String {
    "sqlite:///var/lib/lessor/lessor.db".into()
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_vault_api() -> bool {
    true
}
fn default_revoked_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
