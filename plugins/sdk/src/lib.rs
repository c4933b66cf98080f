//! The contract between the lessor broker and its backend plugins.
//!
//! The broker owns identity, naming, passwords, leases and scheduling; a
//! plugin only talks to its backend. This crate holds what both sides must
//! agree on, and nothing else:
//!
//! - [`Plugin`]: the one object-safe trait a backend implements;
//! - [`Credential`]: what an issuance hands back, with secrets in
//!   [`secrecy`] types so they cannot be logged by accident;
//! - [`PluginError`]: errors as data, classified as retryable or not and by
//!   who is at fault, so the broker can decide between retry, 4xx and 502;
//! - [`names`]: username and password generation, shared so every backend
//!   gets the same safe alphabet and the same truncation rules;
//! - [`template`]: Vault-compatible statement templates (`{{name}}`, …);
//! - [`options`]: a plugin's own config keys parsed into typed settings and
//!   statement lists, with errors that name the key;
//! - [`failure`] and [`redact`]: what the SQL plugins share when they turn
//!   a backend's failure into a message (where it happened, no secrets);
//! - [`deadline`]: an operation bounded by `operation_timeout` and
//!   cancelled on the server, not merely abandoned, when it runs over;
//! - [`proto`] and [`serve`]: the plugin protocol for plugins outside the
//!   daemon (any language, gRPC over a Unix socket), and any [`Plugin`]
//!   served that way;
//! - [`tls`] and [`files`]: TLS modes, their defaults and certificate
//!   checks, shared by the SQL plugins so both secure a connection alike.

pub mod deadline;
pub mod error;
pub mod failure;
pub mod files;
pub mod names;
pub mod options;
pub mod proto;
pub mod redact;
mod serve;
pub mod template;
pub mod tls;

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;

pub use deadline::CANCEL_GRACE;
pub use error::{ConfigError, Fault, PluginError};
pub use serve::serve;

/// A role's plugin-specific settings after the plugin has validated them.
///
/// The broker stores it and hands it back on every call for that role; only
/// the plugin that made it knows its concrete type (see [`downcast_role`]).
pub type RoleSettings = Arc<dyn Any + Send + Sync>;

/// Returns the plugin's own settings type, or a permanent error when the
/// broker handed over settings made by another plugin (a broker bug).
pub fn downcast_role<T: Any + Send + Sync>(settings: &RoleSettings) -> Result<&T, PluginError> {
    settings
        .downcast_ref::<T>()
        .ok_or_else(|| PluginError::Internal { message: "role settings belong to another plugin".into() })
}

/// What a plugin can do beyond create and revoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `renew` moves the backend's own expiry (or is a no-op that may succeed).
    pub renewable: bool,
    /// `revoke` removes the credential. When false the credential lives until
    /// its own expiry (STS tokens) and revoking only ends the lease.
    pub revocable: bool,
    /// The longest username the backend accepts, in bytes.
    pub max_username_len: usize,
}

/// One issuance.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    /// The role's name in the config.
    pub role: &'a str,
    /// What [`Plugin::check_role`] returned for this role.
    pub settings: &'a RoleSettings,
    /// The lease id the credential will be tracked under.
    pub lease_id: &'a str,
    /// The username the broker generated (already persisted in a pending lease).
    pub username: &'a str,
    /// The password the broker generated.
    pub password: &'a SecretString,
    /// When the lease ends.
    pub expires_at: DateTime<Utc>,
}

/// What a successful issuance returns.
#[derive(Debug)]
pub struct Created {
    pub credential: Credential,
    /// Non-secret data the plugin needs later to renew or revoke (for
    /// example an access key id). Stored with the lease.
    pub plugin_data: Option<serde_json::Value>,
    /// When the backend says the credential really ends, if that differs
    /// from the requested expiry (an STS token clamped to AWS's limits).
    /// The lease then ends at this instant instead.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Created {
    /// A credential that ends when the lease asked it to, with no plugin data.
    pub fn new(credential: Credential) -> Self {
        Self { credential, plugin_data: None, expires_at: None }
    }
}

/// A user found in the backend under a prefix lessor owns (for tidy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUser {
    pub name: String,
    /// When the backend says the user was made, if it keeps that.
    pub created_at: Option<DateTime<Utc>>,
}

/// A lease as the plugin sees it when renewing or revoking.
#[derive(Debug)]
pub struct LeaseRef<'a> {
    pub lease_id: &'a str,
    pub role: &'a str,
    /// The role's settings, or `None` when the role is no longer configured:
    /// the plugin then uses its default recipe.
    pub settings: Option<&'a RoleSettings>,
    pub username: &'a str,
    pub plugin_data: Option<&'a serde_json::Value>,
}

/// Credential material handed to the caller: once, or to each holder of
/// a shared lease.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Credential {
    /// A database login.
    Database { username: String, password: SecretString },
    /// An AWS key pair, with a session token for STS credentials.
    Aws {
        access_key_id: String,
        secret_access_key: SecretString,
        session_token: Option<SecretString>,
        expiration: Option<DateTime<Utc>>,
    },
    /// A directory entry (LDAP): the name the user logs in with, the
    /// entry's distinguished name (what a simple bind takes), and its
    /// password.
    Directory { username: String, distinguished_name: String, password: SecretString },
}

/// A backend plugin. One value serves one configured connection.
///
/// Every method must be safe to call concurrently; `revoke` must be
/// idempotent ("already gone" is success).
#[async_trait]
pub trait Plugin: Send + Sync + Debug {
    /// The plugin's name as written in `plugin = "…"`.
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Capabilities of one role, when they depend on its settings (an STS
    /// role is expiry-only, an IAM-user role is revocable).
    fn role_capabilities(&self, settings: &RoleSettings) -> Capabilities {
        let _ = settings;
        self.capabilities()
    }

    /// The rotation strategies (`strategy = "…"` of `[static_accounts]`)
    /// the plugin can carry out: `single` and `alternating` need
    /// [`Plugin::set_password`] and [`Plugin::test_login`], `dual_password`
    /// also [`Plugin::add_password`] and [`Plugin::remove_password`],
    /// `access_key` the key methods. None by default.
    fn static_strategies(&self) -> &'static [&'static str] {
        &[]
    }

    /// Validates a role's plugin-specific settings at config load.
    /// `options` holds every key of the role table the broker does not own.
    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError>;

    /// Checks a role's TTLs against what the backend can honour (AWS STS
    /// AssumeRole: 15 min to 12 h). Called at config load after
    /// [`Plugin::check_role`]; an error names `roles.NAME.max_ttl` or
    /// `roles.NAME.default_ttl`.
    fn check_ttls(
        &self,
        role: &str,
        settings: &RoleSettings,
        default_ttl: std::time::Duration,
        max_ttl: std::time::Duration,
    ) -> Result<(), ConfigError> {
        let _ = (role, settings, default_ttl, max_ttl);
        Ok(())
    }

    /// Can we reach the backend with the admin credential?
    async fn verify(&self) -> Result<(), PluginError>;

    /// Creates the credential. Either the credential exists afterwards and
    /// `Ok` is returned, or the plugin has done its best to leave nothing
    /// behind; the broker revokes the username on error regardless.
    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError>;

    /// Moves the backend's own expiry to `expires_at`.
    async fn renew(&self, lease: &LeaseRef<'_>, expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        let _ = (lease, expires_at);
        Err(PluginError::Unsupported { operation: "renew" })
    }

    /// Removes the credential and ends its sessions. Idempotent. With
    /// `settings: None` the plugin's default recipe runs, which is also how
    /// tidy removes a user no lease covers.
    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError>;

    /// Whether the plugin implements [`Plugin::revoke_batch`], so the broker
    /// should gather due revocations for it.
    fn revokes_in_batches(&self) -> bool {
        false
    }

    /// Revokes several leases of this connection in one go, all or nothing
    /// as far as the broker knows: `Ok` when every one is gone; on `Err` the
    /// broker revokes each with [`Plugin::revoke`], so each failure is that
    /// lease's own. Bounded by `operation_timeout` like any operation.
    async fn revoke_batch(&self, leases: &[LeaseRef<'_>]) -> Result<(), PluginError> {
        let _ = leases;
        Err(PluginError::Unsupported { operation: "revoke_batch" })
    }

    /// Users in the backend whose name starts with `prefix`, for the sweep
    /// of users no lease covers ("tidy").
    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let _ = prefix;
        Err(PluginError::Unsupported { operation: "list_users" })
    }

    /// Sets the password of an existing user whose life lessor does not
    /// own (a static account): PostgreSQL `ALTER ROLE … PASSWORD` (a SCRAM
    /// verifier by default), MySQL `ALTER USER … IDENTIFIED BY` for every
    /// host it exists with. Idempotent: setting the same password twice is
    /// harmless, so a rotation that crashed mid-way simply sets it again.
    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let _ = (username, password);
        Err(PluginError::Unsupported { operation: "set_password" })
    }

    /// Gives `username` a second password that works alongside the ones it
    /// has (Redis ACL `>password`), for the `dual_password` strategy: the
    /// account is rotated on one user, the old password retired by
    /// [`Plugin::set_password`] with the new one once consumers have moved.
    /// Idempotent.
    async fn add_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let _ = (username, password);
        Err(PluginError::Unsupported { operation: "add_password" })
    }

    /// Takes one password away from `username`, leaving the others (Redis
    /// ACL `<password`): a `dual_password` rotation whose new password
    /// failed its test. "Not one of its passwords" is success.
    async fn remove_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let _ = (username, password);
        Err(PluginError::Unsupported { operation: "remove_password" })
    }

    /// Logs in as `username` with `password`, over a connection of its own,
    /// and runs a trivial query: the test phase of a rotation. (An admin
    /// query about the user would not prove that the login works.)
    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let _ = (username, password);
        Err(PluginError::Unsupported { operation: "test_login" })
    }

    /// Ends every session of `username` (a static credential retired with
    /// no overlap). "No session" is success.
    async fn end_sessions(&self, username: &str) -> Result<(), PluginError> {
        let _ = username;
        Err(PluginError::Unsupported { operation: "end_sessions" })
    }

    /// For backends that issue the secret themselves (an IAM user's access
    /// keys, the `access_key` strategy): makes a new key for `username`,
    /// after deleting every key of the user not in `keep` (one a crashed
    /// rotation made and never recorded; `None`: delete nothing, the keys
    /// there before lessor took the account over). Returns the key id and
    /// its secret.
    async fn create_key(
        &self,
        username: &str,
        keep: Option<&[String]>,
    ) -> Result<(String, SecretString), PluginError> {
        let _ = (username, keep);
        Err(PluginError::Unsupported { operation: "create_key" })
    }

    /// Proves a key works by using it (AWS: GetCallerIdentity), waiting a
    /// bounded time for a new key to become usable.
    async fn test_key(&self, key_id: &str, secret: &SecretString) -> Result<(), PluginError> {
        let _ = (key_id, secret);
        Err(PluginError::Unsupported { operation: "test_key" })
    }

    /// Deletes one key of `username`. "Already gone" is success.
    async fn delete_key(&self, username: &str, key_id: &str) -> Result<(), PluginError> {
        let _ = (username, key_id);
        Err(PluginError::Unsupported { operation: "delete_key" })
    }

    /// The user lessor logs in as (a static account of its own when its
    /// password is rotated with `rotate-root`), if the plugin has one.
    fn admin_username(&self) -> Option<String> {
        None
    }

    /// The id of the key lessor signs with, for a plugin whose admin
    /// credential is an access key (AWS): its admin credential is then
    /// rotated as a key (make, test, switch, delete the old one), not as a
    /// password.
    fn admin_key_id(&self) -> Option<String> {
        None
    }

    /// From now on, log in as the admin with `password` (it was rotated, or
    /// a rotated one was found in the store at start-up); `username` is the
    /// new key's id for a key-based admin credential. Connections already
    /// open may stay.
    fn use_admin_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let _ = (username, password);
        Err(PluginError::Unsupported { operation: "use_admin_password" })
    }

    /// Operator action for a leaked credential the backend cannot revoke
    /// one by one (AWS: deny every session of a role issued before now).
    /// Returns a non-secret description of what was done.
    async fn revoke_sessions(
        &self,
        role: &str,
        settings: &RoleSettings,
    ) -> Result<serde_json::Value, PluginError> {
        let _ = (role, settings);
        Err(PluginError::Unsupported { operation: "revoke_sessions" })
    }
}

/// Everything a plugin gets when the broker builds it for one connection.
///
/// A struct rather than arguments, so that a new shared handle reaches
/// every plugin without touching each constructor.
#[derive(Debug)]
pub struct ConnectionContext<'a> {
    /// The connection's name in the config (`[connections.NAME]`).
    pub name: &'a str,
    /// The backend's address, without a password.
    pub url: Option<&'a str>,
    /// The admin password, read from `password_file` or `password_env`.
    pub password: Option<SecretString>,
    /// The most admin connections the plugin may hold open.
    pub max_connections: usize,
    /// The longest one backend operation may take. A plugin that can
    /// cancel its statements on the server bounds them by this itself (see
    /// [`deadline`]); the broker's own bound is this plus [`CANCEL_GRACE`].
    pub operation_timeout: std::time::Duration,
    /// Every key of the connection table the broker does not own.
    pub options: &'a toml::Table,
}

/// Builds a plugin for one connection; one entry of the broker's registry.
pub type PluginFactory = fn(ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError>;
