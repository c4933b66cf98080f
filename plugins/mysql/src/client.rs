//! The engine: [`MySqlPlugin`] runs the role recipes over a bounded pool of
//! admin connections.
//!
//! MySQL commits every account statement (`CREATE USER`, `GRANT`) at once,
//! so creation cannot be one transaction as in PostgreSQL: the statements
//! run in order, and when one fails the role's rollback statements (by
//! default: drop the user for every host it exists with) undo the earlier
//! ones before the error is returned. The broker revokes the username
//! afterwards regardless, so a rollback cut short by a lost connection is
//! finished later.
//!
//! Revocation is idempotent: the default recipe locks the account (no new
//! logins), kills its connections, drops it for every host, and kills
//! again for connections that raced the lock. An unknown user, a grant
//! that is already gone and a connection that already ended all count as
//! success.
//!
//! Passwords: MySQL has no verifier form that every server takes, so
//! `{{password}}` is the password itself. Statement text is never logged
//! nor put in errors (the driver's own tracing feature, which would log
//! it, is left off), and error text is scrubbed of the password.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lessor_plugin::failure::{self, Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::template::{Template, Values};
use lessor_plugin::tls::{TlsMode, TlsSettings};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use crate::config::{native_password_hash, Address, ConnectionSettings, MySqlPasswordEncoding, MySqlRole};
use crate::error::{classify, code, is_already_gone, server_code};
use crate::tls;

/// How long getting an admin connection may take (waiting for a free one,
/// or opening one) before the request fails as `Unavailable`.
pub(crate) const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle admin connections are closed after this long.
const IDLE_TTL: Duration = Duration::from_secs(60);

/// Accounts the server makes for itself; never listed for tidy whatever
/// the prefix.
const SYSTEM_USERS: &[&str] =
    &["root", "mysql", "mariadb.sys", "mysql.sys", "mysql.session", "mysql.infoschema", "debian-sys-maint"];

/// Which server answers: the two differ in where account metadata lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// MariaDB ≥ 10.4: accounts in `mysql.global_priv` (JSON), roles marked
    /// `is_role`; `mysql.user` is a view.
    MariaDb,
    /// MySQL ≥ 8.0: accounts in `mysql.user` with `password_last_changed`;
    /// roles are accounts listed in `mysql.role_edges`.
    MySql,
}

/// The MySQL/MariaDB plugin for one `[connections.NAME]`.
pub struct MySqlPlugin {
    pub(crate) connection: String,
    /// `user@host:port`, for logs and `Debug`.
    pub(crate) target: String,
    /// The admin's user name, which tidy never touches.
    pub(crate) admin_user: String,
    pub(crate) max_username_len: usize,
    pub(crate) encoding: MySqlPasswordEncoding,
    pub(crate) max_connections: usize,
    /// Admin connections; the password lives in the pool's options, which
    /// is why `Debug` is written by hand.
    pub(crate) pool: RwLock<Pool>,
    /// The same options, for the one-off connection that cancels a
    /// statement (`KILL QUERY`) when the pool may have none free. Replaced,
    /// with the pool, when the admin's own password is rotated.
    pub(crate) opts: RwLock<Opts>,
    /// How long one operation's statements may run before they are
    /// cancelled on the server.
    pub(crate) operation_timeout: Duration,
    pub(crate) flavor: OnceLock<Flavor>,
    /// The connection's TLS, as configured.
    pub(crate) tls: TlsSettings,
    /// `verify_ca` only: a name the server's certificate carries, which
    /// the driver verifies against (see `tls`); `None` until found.
    pub(crate) ca_name: Mutex<Option<String>>,
    /// One look for that name at a time.
    pub(crate) ca_probe: tokio::sync::Mutex<()>,
    /// Whether the fall-back to plaintext of `preferred` was logged.
    pub(crate) plaintext_logged: AtomicBool,
    /// Where the server listens, for that one handshake.
    pub(crate) tcp_target: Option<(String, u16)>,
}

impl fmt::Debug for MySqlPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlPlugin")
            .field("connection", &self.connection)
            .field("target", &self.target)
            .field("max_username_len", &self.max_username_len)
            .field("password_encoding", &self.encoding)
            .field("tls_mode", &self.tls.mode)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl MySqlPlugin {
    /// Builds the plugin for one connection. Does not connect: the pool
    /// opens connections on demand, and [`Plugin::verify`] checks them.
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let settings = ConnectionSettings::parse(
            ctx.name,
            ctx.url,
            ctx.password.as_ref(),
            ctx.max_connections,
            ctx.options,
        )?;
        Self::from_settings(settings, ctx.operation_timeout)
    }

    fn from_settings(settings: ConnectionSettings, operation_timeout: Duration) -> Result<Self, ConfigError> {
        let ssl = tls::ssl_opts(&settings.tls, None)
            .map_err(|e| ConfigError::new(format!("connections.{}", settings.name), e))?;
        if let Some(warning) =
            settings.tls.plaintext_warning(&settings.name, &settings.target(), TlsMode::mysql_name)
        {
            warn!("{warning}");
        }
        let constraints = PoolConstraints::new(0, settings.max_connections).expect("max_connections >= 1");
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(IDLE_TTL)
            // Role statements may change session state; every connection
            // goes back to the pool reset.
            .with_reset_connection(true);
        let mut opts = OptsBuilder::default()
            .user(Some(settings.user.clone()))
            .pass(settings.password().map(str::to_string))
            .db_name(settings.database.clone())
            // The driver would otherwise switch a loopback TCP connection to
            // the server's Unix socket, where another account may match.
            .prefer_socket(false)
            .ssl_opts(ssl)
            .pool_opts(pool_opts);
        opts = match &settings.address {
            Address::Tcp { host, port } => opts.ip_or_hostname(host.clone()).tcp_port(*port),
            Address::Socket(path) => opts.socket(Some(path.clone())),
        };
        let opts = Opts::from(opts);
        Ok(Self {
            target: settings.target(),
            connection: settings.name,
            admin_user: settings.user,
            max_username_len: settings.options.max_username_length,
            encoding: settings.options.password_encoding,
            max_connections: settings.max_connections,
            pool: RwLock::new(Pool::new(opts.clone())),
            opts: RwLock::new(opts),
            operation_timeout,
            flavor: OnceLock::new(),
            tcp_target: match &settings.address {
                Address::Tcp { host, port } => Some((host.clone(), *port)),
                Address::Socket(_) => None,
            },
            tls: settings.tls,
            ca_name: Mutex::new(None),
            ca_probe: tokio::sync::Mutex::new(()),
            plaintext_logged: AtomicBool::new(false),
        })
    }

    pub(crate) async fn flavor(&self, conn: &mut Conn, cx: &Context<'_>) -> Result<Flavor, PluginError> {
        if let Some(flavor) = self.flavor.get() {
            return Ok(*flavor);
        }
        let version: Option<String> =
            conn.query_first("SELECT VERSION()").await.map_err(|e| classify(&e, cx, &Redactor::default()))?;
        let flavor = match version {
            Some(v) if v.contains("MariaDB") => Flavor::MariaDb,
            _ => Flavor::MySql,
        };
        Ok(*self.flavor.get_or_init(|| flavor))
    }

    /// The hosts `username` exists with; `None` when the admin may not read
    /// `mysql.user`.
    async fn hosts(
        &self,
        conn: &mut Conn,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<Option<Vec<String>>, PluginError> {
        match conn.exec::<String, _, _>("SELECT Host FROM mysql.user WHERE User = ?", (username,)).await {
            Ok(hosts) => Ok(Some(hosts)),
            Err(e) if server_code(&e) == Some(code::TABLE_ACCESS_DENIED) => {
                debug!(connection = %self.connection, username, "cannot read mysql.user");
                Ok(None)
            }
            Err(e) => Err(classify(&e, &cx.step("read mysql.user", false), &Redactor::default())),
        }
    }

    /// Templates paste the username raw between the operator's own quotes,
    /// so a name that could close them is refused before anything is
    /// rendered.
    pub(crate) fn check_username(&self, username: &str, cx: &Context<'_>) -> Result<(), PluginError> {
        failure::check_username(username, self.max_username_len, &[], cx)
    }
}

#[async_trait]
impl Plugin for MySqlPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        // Renewal only moves the lease: MySQL accounts have no expiry.
        Capabilities { renewable: true, revocable: true, max_username_len: self.max_username_len }
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        &["single", "alternating"]
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(Arc::new(MySqlRole::parse_for(role, options, self.encoding)?))
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Verify, None);
        let redactor = Redactor::default();
        let mut conn = self.get(&cx, &redactor).await?;
        let flavor = self.flavor(&mut conn, &cx).await?;
        // The admin's own global privileges (those granted through roles do
        // not show here, hence warnings rather than failures for the rest).
        let privileges: Vec<String> = conn
            .query(
                "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = \
                 CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
            )
            .await
            .map_err(|e| classify(&e, &cx, &redactor))?;
        let has = |p: &str| privileges.iter().any(|x| x.eq_ignore_ascii_case(p));
        debug!(operation = "verify", connection = %self.connection, target = %self.target, ?flavor, privileges = privileges.len(), "verified");
        // As the server sees the session (behind a proxy: the proxy's hop);
        // best effort, a failed look-up fails nothing.
        let session_tls = match tls::session(&mut conn).await {
            Ok(Some(tls)) => tls,
            Ok(None) => "off".to_string(),
            Err(e) => format!("unknown ({})", classify(&e, &cx, &redactor)),
        };
        info!(
            connection = %self.connection,
            target = %self.target,
            tls_mode = self.tls.mode.mysql_name(),
            tls = session_tls.as_str(),
            certificate = if session_tls == "off" { "no TLS" } else { self.tls.verification() },
            "admin connection"
        );
        if !has("CREATE USER") {
            return Err(PluginError::Rejected {
                message: format!(
                    "verify: the admin user of {} has no global CREATE USER privilege, so it cannot create or drop users",
                    self.target
                ),
            });
        }
        if !has("PROCESS") || !(has("SUPER") || has("CONNECTION ADMIN") || has("CONNECTION_ADMIN")) {
            warn!(
                connection = %self.connection,
                target = %self.target,
                "the admin user lacks PROCESS and CONNECTION ADMIN (MySQL: CONNECTION_ADMIN): revocation cannot end the sessions of revoked users"
            );
        }
        Ok(())
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let role: &MySqlRole = downcast_role(request.settings)?;
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        self.check_username(username, &cx)?;
        let password = request.password.expose_secret();
        let sent = match self.encoding {
            MySqlPasswordEncoding::Plaintext => request.password.clone(),
            MySqlPasswordEncoding::MysqlNativePassword => SecretString::from(native_password_hash(password)),
        };
        let redactor = Redactor::new([password, sent.expose_secret()]);
        let expiration = format_expiration(request.expires_at);
        let values =
            Values { name: username, password: Some(sent.expose_secret()), expiration: Some(&expiration) };
        debug!(operation = "create", connection = %self.connection, role = request.role, username, lease_id = request.lease_id, "creating user");

        let conn = self.get(&cx, &redactor).await?;
        let total = role.creation.len();
        let run_statements = async |conn: &mut Conn| {
            for (i, template) in role.creation.iter().enumerate() {
                let sql = template.render(&values);
                conn.query_drop(sql.expose_secret()).await.map_err(|e| (i, e))?;
            }
            Ok(())
        };
        // A timed-out creation is not rolled back here: its connection is
        // closed, and the broker revokes the username once the server has
        // answered the kill.
        let (result, conn) = self.bounded(conn, &cx, run_statements).await?;
        if let Err((i, e)) = result {
            let err =
                classify(&e, &cx.step(format!("creation statement {} of {total}", i + 1), true), &redactor);
            debug!(operation = "create", connection = %self.connection, role = request.role, username, error = %err, "creation failed; rolling back");
            // A broken connection cannot run the rollback; a fresh one can.
            let conn = if e.is_fatal() { None } else { Some(conn) };
            self.rollback(conn, role, request).await;
            return Err(err);
        }
        debug!(operation = "create", connection = %self.connection, role = request.role, username, "created");
        Ok(Created::new(Credential::Database {
            username: username.to_string(),
            password: request.password.clone(),
        }))
    }

    async fn renew(&self, lease: &LeaseRef<'_>, expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        let username = lease.username;
        let cx = Context::new(Operation::Renew, Some(username));
        let redactor = Redactor::default();
        let custom = match lease.settings {
            Some(settings) => downcast_role::<MySqlRole>(settings)?.renew.as_deref(),
            None => None,
        };
        if custom.is_some() {
            self.check_username(username, &cx)?;
        }
        let conn = self.get(&cx, &redactor).await?;
        let work = async |conn: &mut Conn| {
            // MySQL accounts do not expire: the lease moves, and lessor
            // revokes the user when it ends. Renewing a user that is gone is
            // refused.
            if let Some(hosts) = self.hosts(conn, username, &cx).await? {
                if hosts.is_empty() {
                    return Err(PluginError::Rejected {
                        message: format!("renew {username}: the user no longer exists"),
                    });
                }
            }
            let Some(statements) = custom else { return Ok(()) };
            let expiration = format_expiration(expires_at);
            for (i, template) in statements.iter().enumerate() {
                let sql = template.render(&Values {
                    name: username,
                    password: None,
                    expiration: Some(&expiration),
                });
                if let Err(e) = conn.query_drop(sql.expose_secret()).await {
                    let step = format!("renew statement {} of {}", i + 1, statements.len());
                    return Err(classify(&e, &cx.step(step, true), &redactor));
                }
            }
            Ok(())
        };
        self.bounded(conn, &cx, work).await?.0?;
        debug!(operation = "renew", connection = %self.connection, role = lease.role, username, custom = custom.is_some(), "renewed");
        Ok(())
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.set_account_password(username, password).await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.login_as(username, password).await
    }

    async fn end_sessions(&self, username: &str) -> Result<(), PluginError> {
        self.end_account_sessions(username).await
    }

    fn admin_username(&self) -> Option<String> {
        Some(self.admin_user.clone())
    }

    fn use_admin_password(&self, _username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.switch_admin_password(password);
        Ok(())
    }

    fn revokes_in_batches(&self) -> bool {
        true
    }

    async fn revoke_batch(&self, leases: &[LeaseRef<'_>]) -> Result<(), PluginError> {
        self.revoke_many(leases).await
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        let username = lease.username;
        let cx = Context::new(Operation::Revoke, Some(username));
        let custom = match lease.settings {
            Some(settings) => downcast_role::<MySqlRole>(settings)?.revocation.as_deref(),
            None => None,
        };
        debug!(operation = "revoke", connection = %self.connection, role = lease.role, username, custom = custom.is_some(), "revoking");
        if custom.is_some() {
            self.check_username(username, &cx)?;
        }
        let conn = self.get(&cx, &Redactor::default()).await?;
        let work = async |conn: &mut Conn| match custom {
            Some(statements) => self.revoke_custom(conn, username, statements, &cx).await,
            None => self.revoke_default(conn, username, &cx).await,
        };
        self.bounded(conn, &cx, work).await?.0?;
        debug!(operation = "revoke", connection = %self.connection, role = lease.role, username, "revoked");
        Ok(())
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let cx = Context::new(Operation::ListUsers, None);
        let redactor = Redactor::default();
        let mut conn = self.get(&cx, &redactor).await?;
        let flavor = self.flavor(&mut conn, &cx).await?;
        // The newest password change of any of the user's hosts stands for
        // its age (a younger-looking user is dropped later, never sooner),
        // measured against the server's own clock.
        let sql = match flavor {
            Flavor::MariaDb => {
                "SELECT User, MAX(CAST(JSON_VALUE(Priv, '$.password_last_changed') AS SIGNED)), \
                        CAST(UNIX_TIMESTAMP() AS SIGNED) \
                 FROM mysql.global_priv \
                 WHERE User LIKE ? ESCAPE '!' AND Host <> '' \
                   AND IFNULL(JSON_VALUE(Priv, '$.is_role'), 'false') <> 'true' \
                   AND User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                 GROUP BY User"
            }
            Flavor::MySql => {
                "SELECT u.User, MAX(CAST(UNIX_TIMESTAMP(u.password_last_changed) AS SIGNED)), \
                        CAST(UNIX_TIMESTAMP() AS SIGNED) \
                 FROM mysql.user u \
                 WHERE u.User LIKE ? ESCAPE '!' \
                   AND u.User <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                   AND NOT EXISTS (SELECT 1 FROM mysql.role_edges e WHERE e.FROM_USER = u.User) \
                 GROUP BY u.User"
            }
        };
        let rows: Vec<(String, Option<i64>, i64)> =
            conn.exec(sql, (like_prefix(prefix),)).await.map_err(|e| classify(&e, &cx, &redactor))?;
        let now = Utc::now();
        let users = rows
            .into_iter()
            .filter(|(name, _, _)| {
                name.starts_with(prefix) && *name != self.admin_user && !SYSTEM_USERS.contains(&name.as_str())
            })
            .map(|(name, changed, server_now)| {
                let created_at = changed.map(|at| now - chrono::Duration::seconds((server_now - at).max(0)));
                BackendUser { name, created_at }
            })
            .collect();
        Ok(users)
    }
}

/// `{{expiration}}` for MySQL: UTC, `YYYY-MM-DD HH:MM:SS`, the form a
/// `DATETIME` literal takes on every version.
pub(crate) fn format_expiration(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `user`@`host` with both quoted as identifiers (backticks doubled), which
/// no `sql_mode` reads differently.
pub(crate) fn account(user: &str, host: &str) -> String {
    format!("`{}`@`{}`", user.replace('`', "``"), host.replace('`', "``"))
}

/// A `LIKE … ESCAPE '!'` pattern for names starting with `prefix`: `_` and
/// `%` are wildcards in LIKE, and lessor's names are full of `_`.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '!' | '_' | '%') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

mod revoke;
#[cfg(test)]
mod tests;
