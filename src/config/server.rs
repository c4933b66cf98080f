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
    /// `sqlite://relative/path.db` (one node), or
    /// `postgres://user@host:port/db` (a store several nodes can share;
    /// the password from `store_password_file` or `store_password_env`).
    #[serde(default = "default_store")]
    pub store: String,
    /// File holding the PostgreSQL store's password (trailing newline
    /// ignored); keep it mode 0600.
    pub store_password_file: Option<PathBuf>,
    /// Environment variable holding the PostgreSQL store's password.
    pub store_password_env: Option<String>,
    /// This daemon's name in a shared store (which node issued a lease);
    /// the host name when omitted.
    pub node_id: Option<String>,
    /// With a shared store: how old a node's heartbeat may be before the
    /// others count it dead and take over its work (revoke its due leases,
    /// roll back its pending ones, finish the revocations it claimed).
    /// Nodes heartbeat every third of it.
    #[serde(default = "default_node_timeout")]
    pub node_timeout: Duration,
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
    /// How often a lease flagged `irrevocable` (its revocation failed six
    /// times in a row) is tried again; after a restart, each is tried at a
    /// random point within one such period, so a backlog is spread out.
    #[serde(default = "default_irrevocable_retry")]
    pub irrevocable_retry: Duration,
    /// How far ahead the daemon keeps deadlines in memory: the expiries
    /// and `lease_expiring` warnings that fall within it, its own and, with
    /// a shared store, the other nodes'. Later ones stay in the store and
    /// are read in every half window, so memory follows how many leases
    /// fall due within the window, not how many there are.
    #[serde(default = "default_expiry_window")]
    pub expiry_window: Duration,
    /// Serve the Vault-compatible routes (`/v1/database/…`, `/v1/aws/…`,
    /// `/v1/sys/leases/…`) beside lessor's own, so the `bao`/`vault` CLI,
    /// hvac and OpenBao Agent work unchanged. The same identity and
    /// permission checks apply to both.
    #[serde(default = "default_vault_api")]
    pub vault_api: bool,
    /// How long a client may take to send a request's headers, and how
    /// long an idle connection is kept open waiting for the next request;
    /// past it the connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// The most connections the socket holds open at once. The last
    /// `admin_connections` of them are kept for root and the daemon's own
    /// user, so no other user can fill the socket.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of `max_connections`, how many only root and the daemon's own user
    /// may take.
    #[serde(default = "default_admin_connections")]
    pub admin_connections: usize,
    /// The most connections one uid holds open at once (root inside a
    /// container counts apart from the host's root). Past it, new ones are
    /// answered 429 and closed.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// The most `GET /v1/watch` streams one uid holds open at once.
    #[serde(default = "default_max_watches_per_uid")]
    pub max_watches_per_uid: usize,
    /// Path of the socket systemd's `LoadCredential=` connects to
    /// (`/run/lessor/credentials.sock`), serving `[credentials]`. Only the
    /// service manager (PID 1, as root) is answered; the file is made
    /// mode 0600. Off when omitted, unless the service manager passes the
    /// socket in (`lessor-credentials.socket`), which is then served.
    pub credentials_socket: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            socket_mode: default_socket_mode(),
            store: default_store(),
            store_password_file: None,
            store_password_env: None,
            node_id: None,
            node_timeout: default_node_timeout(),
            audit_log: None,
            admins: None,
            seal_key_file: None,
            request_timeout: default_request_timeout(),
            max_body_bytes: default_max_body_bytes(),
            revoked_retention: default_revoked_retention(),
            irrevocable_retry: default_irrevocable_retry(),
            expiry_window: default_expiry_window(),
            vault_api: default_vault_api(),
            header_timeout: default_header_timeout(),
            max_connections: default_max_connections(),
            admin_connections: default_admin_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            max_watches_per_uid: default_max_watches_per_uid(),
            credentials_socket: None,
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
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    4096
}
fn default_admin_connections() -> usize {
    64
}
fn default_max_connections_per_uid() -> usize {
    256
}
fn default_max_watches_per_uid() -> usize {
    16
}
fn default_vault_api() -> bool {
    true
}
fn default_node_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_revoked_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_irrevocable_retry() -> Duration {
    Duration::from_secs(3600)
}
fn default_expiry_window() -> Duration {
    Duration::from_secs(600)
}

/// `server.store` and what goes with it: the kind of store, a PostgreSQL
/// store's password source (never in the URL), and `node_id`.
pub(super) fn check_store(server: &ServerConfig, errors: &mut Vec<lessor_plugin::ConfigError>) {
    use lessor_plugin::ConfigError;
    let store = server.store.as_str();
    let postgres = store.starts_with("postgres://") || store.starts_with("postgresql://");
    if !store.starts_with("sqlite://") && !postgres {
        errors.push(ConfigError::new(
            "server.store",
            "not supported; use sqlite:///path/to/lessor.db or postgres://user@host:5432/db",
        ));
    }
    if postgres {
        let userinfo = store.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        if userinfo.is_some_and(|u| u.rsplit_once('@').is_some_and(|(user, _)| user.contains(':'))) {
            errors.push(ConfigError::new(
                "server.store",
                "holds a password: put it in store_password_file or store_password_env instead",
            ));
        }
        // The URL and its TLS parameters, as the store will read them (a CA
        // or key file that cannot be read fails here, not at start).
        if let Err(e) = lessor_postgres::connection_for_url(store) {
            errors.push(ConfigError::new("server.store", e));
        }
        if server.store_password_file.is_some() && server.store_password_env.is_some() {
            errors.push(ConfigError::new(
                "server.store_password_file",
                "give store_password_file or store_password_env, not both",
            ));
        }
        if let Some(file) = &server.store_password_file {
            if let Err(e) = lessor_plugin::files::check_private(file) {
                errors
                    .push(ConfigError::new("server.store_password_file", format!("{}: {e}", file.display())));
            }
        }
    } else if server.store_password_file.is_some() || server.store_password_env.is_some() {
        errors.push(ConfigError::new(
            "server.store_password_file",
            "only a postgres:// store takes a password",
        ));
    }
    let timeout = server.node_timeout.as_std();
    if timeout < std::time::Duration::from_secs(1) || timeout > std::time::Duration::from_secs(3600) {
        errors.push(ConfigError::new(
            "server.node_timeout",
            format!("{}: between 1s and 1h", server.node_timeout),
        ));
    }
    if let Some(node) = &server.node_id {
        if node.is_empty() || node.len() > 128 || node.chars().any(|c| c.is_control() || c.is_whitespace()) {
            errors.push(ConfigError::new(
                "server.node_id",
                format!("{node:?}: 1 to 128 characters, no spaces or control characters"),
            ));
        }
    }
}

impl ServerConfig {
    /// This node's name: `node_id`, else the host name.
    pub fn node(&self) -> String {
        self.node_id.clone().unwrap_or_else(Self::host_name)
    }

    /// This host's name ("localhost" if it has none).
    pub fn host_name() -> String {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most buf.len() bytes into buf.
        let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        match ok {
            true if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
            _ => "localhost".into(),
        }
    }
}
