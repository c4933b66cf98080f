//! The engine: [`PgPlugin`] runs the role recipes over a pool of admin
//! connections.
//!
//! Creation is one transaction, so a failed grant leaves no half-made role.
//! Revocation is the opposite: each step commits on its own, because a
//! `NOLOGIN` that sticks is worth more than a rollback to a role that can
//! still log in while a later step (say `DROP OWNED`) fails. Every step that
//! finds the role gone counts as success, so revoking is idempotent and two
//! brokers racing on the same lease both succeed.
//!
//! Passwords: by default `{{password}}` renders as a SCRAM-SHA-256 verifier
//! computed here, so the plaintext never crosses the wire. Statement text is
//! never logged nor put in errors; error text is scrubbed of the password
//! and verifier (see [`crate::error`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool, PoolError, Runtime};
use lessor_plugin::deadline::{self, Bounded};
use lessor_plugin::failure::{self, Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::template::{Template, Values};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::error::SqlState;
use tracing::{debug, info, warn};

use crate::config::{target, ConnectionSettings, PasswordEncoding, PgRole, CONNECT_TIMEOUT};
use crate::error::{classify, classify_pool, with_verifier_parts};
use crate::grants;
use crate::pipeline::{pipelined, Failed};
use crate::scram;
use crate::tls::{self, PgTls};

/// How long a request may wait for a free admin connection before it fails
/// as `Unavailable` (the broker retries; a stuck pool must not hang callers).
pub(crate) const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL's `NAMEDATALEN - 1`.
pub(crate) const MAX_USERNAME_LEN: usize = 63;

/// The PostgreSQL plugin for one `[connections.NAME]`.
pub struct PgPlugin {
    pub(crate) connection: String,
    /// `user@host:port/db`, for logs and `Debug`.
    target: String,
    pub(crate) encoding: PasswordEncoding,
    /// PBKDF2 iterations of the verifiers computed here.
    pub(crate) scram_iterations: u32,
    /// The admin's connection settings, from which a login test as another
    /// user is made (user and password replaced). Replaced, with the pool,
    /// when the admin's own password is rotated.
    pub(crate) login_config: RwLock<tokio_postgres::Config>,
    /// Admin connections; the password lives inside the manager's
    /// `tokio_postgres::Config`, which is why `Debug` is written by hand.
    pool: RwLock<Pool>,
    /// The TLS every connection to the server uses.
    pub(crate) tls: PgTls,
    max_connections: usize,
    /// How long one operation's statements may run before they are
    /// cancelled on the server.
    pub(crate) operation_timeout: Duration,
    /// Verifiers of creations that met a transient conflict, by username,
    /// for the broker's retry of the same issuance.
    retry_verifiers: Mutex<HashMap<String, SecretString>>,
}

impl fmt::Debug for PgPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPlugin")
            .field("connection", &self.connection)
            .field("target", &self.target)
            .field("password_encoding", &self.encoding)
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl PgPlugin {
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
        let target = target(&settings.pg);
        let key = format!("connections.{}", settings.name);
        let tls = PgTls::new(settings.tls.clone()).map_err(|e| ConfigError::new(&key, e))?;
        if let Some(warning) =
            settings.tls.plaintext_warning(&settings.name, &target, lessor_plugin::tls::TlsMode::libpq_name)
        {
            warn!("{warning}");
        }
        let pool = build_pool(&tls, settings.pg.clone(), settings.max_connections)
            .map_err(|e| ConfigError::new(&key, e))?;
        Ok(Self {
            connection: settings.name,
            target,
            encoding: settings.options.password_encoding,
            scram_iterations: settings.options.scram_iterations,
            login_config: RwLock::new(settings.pg),
            pool: RwLock::new(pool),
            tls,
            max_connections: settings.max_connections,
            operation_timeout,
            retry_verifiers: Mutex::default(),
        })
    }

    pub(crate) async fn get(&self, cx: &Context<'_>, redactor: &Redactor) -> Result<Object, PluginError> {
        let pool = self.pool.read().unwrap().clone();
        pool.get().await.map_err(|e| match &e {
            PoolError::Backend(err) => self.classify_connect(err, cx, redactor),
            _ => classify_pool(&e, cx, redactor),
        })
    }

    /// Classifies a failed connection attempt; a failed TLS handshake names
    /// the connection, the server and why the certificate was refused.
    pub(crate) fn classify_connect(
        &self,
        err: &tokio_postgres::Error,
        cx: &Context<'_>,
        redactor: &Redactor,
    ) -> PluginError {
        match tls::failure(err) {
            Some(why) => PluginError::Unavailable {
                message: self.tls.settings.failure(
                    &cx.prefix(),
                    &self.target,
                    &self.connection,
                    lessor_plugin::tls::TlsMode::libpq_name,
                    &why,
                ),
            },
            None => classify(err, cx, redactor),
        }
    }

    /// From now on, admin connections log in with `password` (the admin's
    /// own password was rotated). Connections already open stay open.
    pub(crate) fn switch_admin_password(&self, password: &SecretString) -> Result<(), PluginError> {
        let mut config = self.login_config.read().unwrap().clone();
        config.password(password.expose_secret());
        let pool = build_pool(&self.tls, config.clone(), self.max_connections)
            .map_err(|message| PluginError::Internal { message })?;
        *self.pool.write().unwrap() = pool;
        *self.login_config.write().unwrap() = config;
        debug!(connection = %self.connection, "admin connections now use the rotated password");
        Ok(())
    }

    /// After an operation on `client` ran over `operation_timeout` and was
    /// cancelled: the connection is closed instead of going back to the
    /// pool, and the operation fails as `Unavailable`.
    pub(crate) fn abandon(&self, client: Object, settled: bool, cx: &Context<'_>) -> PluginError {
        drop(Object::take(client));
        debug!(connection = %self.connection, username = cx.username.unwrap_or(""), settled, "operation timed out; statement cancelled, connection closed");
        deadline::timed_out(&cx.prefix(), self.operation_timeout, settled)
    }

    /// Runs the role's rollback statements after a failed creation, best
    /// effort: the broker revokes the username regardless.
    async fn rollback(
        &self,
        client: &Object,
        role: &str,
        statements: &[Template],
        username: &str,
        redactor: &Redactor,
    ) {
        let cx = Context::new(Operation::Create, Some(username));
        for (i, template) in statements.iter().enumerate() {
            let sql = template.render(&Values { name: username, password: None, expiration: None });
            if let Err(e) = client.batch_execute(sql.expose_secret()).await {
                let step = format!("rollback statement {} of {}", i + 1, statements.len());
                let err = classify(&e, &cx.step(step, true), redactor);
                debug!(operation = "create", connection = %self.connection, role, username, error = %err, "rollback statement failed");
            }
        }
    }
}

#[async_trait]
impl Plugin for PgPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { renewable: true, revocable: true, max_username_len: MAX_USERNAME_LEN }
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        &["single", "alternating"]
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(Arc::new(PgRole::parse(role, options)?))
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Verify, None);
        let redactor = Redactor::default();
        let client = self.get(&cx, &redactor).await?;
        client.batch_execute("SELECT 1").await.map_err(|e| classify(&e, &cx, &redactor))?;
        let row = client
            .query_opt("SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .map_err(|e| classify(&e, &cx, &redactor))?;
        let can_create: bool = row.map(|r| r.get(0)).unwrap_or(false);
        debug!(operation = "verify", connection = %self.connection, target = %self.target, can_create, "verified");
        // As the server sees the session (behind a pooler: the pooler's
        // hop); best effort, a failed look-up fails nothing.
        let session_tls = match tls::session(&client).await {
            Ok(Some(tls)) => tls,
            Ok(None) => "off".to_string(),
            Err(e) => format!("unknown ({})", classify(&e, &cx, &redactor)),
        };
        let verification = if session_tls == "off" { "no TLS" } else { self.tls.settings.verification() };
        info!(
            connection = %self.connection,
            target = %self.target,
            sslmode = self.tls.settings.mode.libpq_name(),
            tls = session_tls.as_str(),
            certificate = verification,
            "admin connection"
        );
        if !can_create {
            return Err(PluginError::Rejected {
                message: format!(
                    "verify: the admin role of {} has neither CREATEROLE nor SUPERUSER, so it cannot create roles",
                    self.target
                ),
            });
        }
        Ok(())
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let role: &PgRole = downcast_role(request.settings)?;
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        check_username(username, &cx)?;

        let password = request.password.expose_secret();
        let sent = match self.encoding {
            // A retry after a transient conflict reuses the verifier made for
            // the first attempt: computing one is most of lessor's own cost.
            PasswordEncoding::ScramSha256 => {
                let cached = self.retry_verifiers.lock().unwrap().remove(username);
                match cached {
                    Some(verifier) => verifier,
                    None => scram_verifier(request.password.clone(), self.scram_iterations).await?,
                }
            }
            PasswordEncoding::Plaintext => request.password.clone(),
        };
        let redactor = Redactor::new(with_verifier_parts([password, sent.expose_secret()]));
        let expiration = format_expiration(request.expires_at);
        let values =
            Values { name: username, password: Some(sent.expose_secret()), expiration: Some(&expiration) };
        debug!(operation = "create", connection = %self.connection, role = request.role, username, lease_id = request.lease_id, "creating role");

        let client = self.get(&cx, &redactor).await?;
        let token = client.cancel_token();
        let work = async {
            let sql: Vec<SecretString> = role.creation.iter().map(|t| t.render(&values)).collect();
            let total = sql.len();
            match pipelined(&client, &sql).await {
                Ok(()) => Ok(()),
                Err(Failed::Statement(i, e)) => {
                    let step = cx.step(format!("creation statement {} of {total}", i + 1), true);
                    let acl_full = e.as_db_error().and_then(|db| {
                        grants::acl_full(db.code(), db.message(), &role.creation[i], &step, &redactor)
                    });
                    Err(acl_full.unwrap_or_else(|| classify(&e, &step, &redactor)))
                }
                Err(Failed::Begin(e)) => Err(classify(&e, &cx, &redactor)),
                Err(Failed::Commit(e)) => Err(classify(&e, &cx.step("COMMIT", false), &redactor)),
            }
        };
        // A timed-out creation is not rolled back here: its connection is
        // closed, and the broker revokes the username once the server has
        // answered the cancel.
        let result = match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(result) => result,
            Bounded::TimedOut { settled } => return Err(self.abandon(client, settled, &cx)),
        };

        if let Err(err) = result {
            debug!(operation = "create", connection = %self.connection, role = request.role, username, error = %err, "creation failed; rolled back");
            if err.is_transient_conflict() && self.encoding == PasswordEncoding::ScramSha256 {
                let mut cache = self.retry_verifiers.lock().unwrap();
                // Bounded: entries of issuances the broker gave up on are dropped.
                if cache.len() >= 1024 {
                    cache.clear();
                }
                cache.insert(username.to_string(), sent);
            }
            if let Some(rollback) = &role.rollback {
                if !client.is_closed() {
                    self.rollback(&client, request.role, rollback, username, &redactor).await;
                }
            }
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
        let expiration = format_expiration(expires_at);
        let custom = match lease.settings {
            Some(settings) => downcast_role::<PgRole>(settings)?.renew.as_deref(),
            None => None,
        };
        debug!(operation = "renew", connection = %self.connection, role = lease.role, username, expiration, "renewing");
        let statements: Vec<(String, SecretString, bool)> = match custom {
            Some(templates) => {
                check_username(username, &cx)?;
                templates
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let sql = t.render(&Values {
                            name: username,
                            password: None,
                            expiration: Some(&expiration),
                        });
                        (format!("renew statement {} of {}", i + 1, templates.len()), sql, true)
                    })
                    .collect()
            }
            None => vec![(
                "ALTER ROLE VALID UNTIL".to_string(),
                SecretString::from(format!(
                    "ALTER ROLE {} VALID UNTIL '{expiration}'",
                    quote_ident(username)
                )),
                false,
            )],
        };
        let client = self.get(&cx, &redactor).await?;
        let token = client.cancel_token();
        let work = async {
            let sql: Vec<SecretString> = statements.iter().map(|(_, sql, _)| sql.clone()).collect();
            match pipelined(&client, &sql).await {
                Ok(()) => Ok(()),
                Err(Failed::Statement(i, e)) => {
                    let (step, _, role_statement) = &statements[i];
                    Err(if is_undefined_object(&e) && !role_statement {
                        PluginError::Rejected {
                            message: format!("renew {username}: the role no longer exists"),
                        }
                    } else {
                        classify(&e, &cx.step(step.clone(), *role_statement), &redactor)
                    })
                }
                Err(Failed::Begin(e)) => Err(classify(&e, &cx, &redactor)),
                Err(Failed::Commit(e)) => Err(classify(&e, &cx.step("COMMIT", false), &redactor)),
            }
        };
        match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(result) => result?,
            Bounded::TimedOut { settled } => return Err(self.abandon(client, settled, &cx)),
        }
        debug!(operation = "renew", connection = %self.connection, role = lease.role, username, "renewed");
        Ok(())
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.set_account_password(username, password).await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.login_as(username, password).await
    }

    async fn end_sessions(&self, username: &str) -> Result<(), PluginError> {
        self.terminate_sessions(username).await
    }

    fn admin_username(&self) -> Option<String> {
        self.login_config.read().unwrap().get_user().map(str::to_string)
    }

    fn use_admin_password(&self, _username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.switch_admin_password(password)
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
            Some(settings) => downcast_role::<PgRole>(settings)?.revocation.as_deref(),
            None => None,
        };
        debug!(operation = "revoke", connection = %self.connection, role = lease.role, username, custom = custom.is_some(), "revoking");
        let client = self.get(&cx, &Redactor::default()).await?;
        let token = client.cancel_token();
        let work = async {
            match custom {
                Some(statements) => self.revoke_custom(&client, username, statements, &cx).await,
                None => self.revoke_default(&client, username, &cx).await,
            }
        };
        match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(result) => result?,
            Bounded::TimedOut { settled } => return Err(self.abandon(client, settled, &cx)),
        }
        debug!(operation = "revoke", connection = %self.connection, role = lease.role, username, "revoked");
        Ok(())
    }

    /// Login and group roles under `prefix`, for tidy. PostgreSQL keeps no
    /// creation time, so `created_at` is always `None` (tidy then counts
    /// from when it first saw the role). Never listed, whatever the prefix:
    /// the admin itself, reserved `pg_*` roles, superusers, and roles that
    /// other roles are members of (group roles; the admin's own membership,
    /// which PostgreSQL 16 grants on every role it creates, does not count).
    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let cx = Context::new(Operation::ListUsers, None);
        let redactor = Redactor::default();
        let client = self.get(&cx, &redactor).await?;
        let rows = client
            .query(
                "SELECT r.rolname::text FROM pg_roles r \
                 WHERE left(r.rolname, length($1)) = $1 \
                   AND r.rolname <> current_user AND r.rolname !~ '^pg_' AND NOT r.rolsuper \
                   AND NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.member \
                                   WHERE m.roleid = r.oid AND g.rolname <> current_user) \
                 ORDER BY 1",
                &[&prefix],
            )
            .await
            .map_err(|e| classify(&e, &cx, &redactor))?;
        Ok(rows
            .iter()
            .map(|row| row.get::<_, String>(0))
            .filter(|name| name.starts_with(prefix))
            .map(|name| BackendUser { name, created_at: None })
            .collect())
    }
}

/// The admin connection pool for `config`. `Fast` recycling only checks
/// that the socket is open; a connection that died since is reported as
/// Unavailable and the broker retries.
fn build_pool(tls: &PgTls, config: tokio_postgres::Config, max_connections: usize) -> Result<Pool, String> {
    Pool::builder(tls.manager(config))
        .max_size(max_connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| e.to_string())
}

/// A SCRAM-SHA-256 verifier for `password`. With few iterations it takes
/// microseconds and is computed in place; thousands (the default 4096)
/// take milliseconds of CPU, so those run on the blocking pool rather than
/// on a worker thread that also serves other requests.
pub(crate) async fn scram_verifier(
    password: SecretString,
    iterations: u32,
) -> Result<SecretString, PluginError> {
    const INLINE_UP_TO: u32 = 256;
    if iterations <= INLINE_UP_TO {
        return Ok(SecretString::from(scram::verifier(password.expose_secret(), iterations)));
    }
    tokio::task::spawn_blocking(move || {
        SecretString::from(scram::verifier(password.expose_secret(), iterations))
    })
    .await
    .map_err(|e| PluginError::Internal { message: format!("computing the SCRAM verifier failed: {e}") })
}

/// `{{expiration}}` as PostgreSQL reads it in `VALID UNTIL`: UTC, explicit
/// offset, whole seconds.
pub(crate) fn format_expiration(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

/// Quotes an identifier, doubling any `"`. Broker usernames are
/// `[a-z0-9_]`, so this is defence in depth.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Templates paste the username raw between the operator's own quotes, so
/// a name that could close them is refused before anything is rendered.
/// `-` and `.` are accepted too: inside double quotes they are plain characters.
pub(crate) fn check_username(username: &str, cx: &Context<'_>) -> Result<(), PluginError> {
    failure::check_username(username, MAX_USERNAME_LEN, b"-.", cx)
}

pub(crate) fn is_undefined_object(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_OBJECT)
}

pub(crate) async fn role_exists(client: &Object, username: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username]).await?;
    Ok(row.is_some())
}

#[cfg(test)]
mod tests;
