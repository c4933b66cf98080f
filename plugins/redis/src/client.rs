//! The engine: [`RedisPlugin`] runs the ACL commands over one
//! auto-reconnecting connection of the admin user (commands are pipelined
//! on it, so one connection serves concurrent issuance).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lessor_plugin::failure::{self, Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::tls::{TlsFiles, TlsMode, TlsSettings};
use lessor_plugin::{
    downcast_role, BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created,
    Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, IntoConnectionInfo, RedisError};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::config::{parse_connection, parse_role, RedisRole};

/// Usernames lessor makes: ACL names take any bytes, these stay readable
/// in `ACL LIST` and safe in every client.
const MAX_USERNAME_LEN: usize = 64;

pub struct RedisPlugin {
    connection: String,
    info: redis::ConnectionInfo,
    /// With `rediss://`: the CA (PEM; the system's roots when `None`) and
    /// the client certificate and key.
    tls: Option<Tls>,
    /// The admin's connection, made on first use and kept.
    manager: OnceCell<ConnectionManager>,
    /// Whether the server keeps its users in an `aclfile`, which every
    /// change is saved to; read on first use.
    saves: OnceCell<bool>,
    operation_timeout: Duration,
    admin: Option<String>,
}

/// The PEM files of a TLS connection, read at load.
#[derive(Clone)]
struct Tls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPlugin")
            .field("connection", &self.connection)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl RedisPlugin {
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let key = format!("connections.{}", ctx.name);
        let options = parse_connection(ctx.name, ctx.options)?;
        let url = ctx.url.ok_or_else(|| {
            ConfigError::new(format!("{key}.url"), "required, e.g. \"redis://lessor_admin@127.0.0.1:6379\"")
        })?;
        let tls = if url.starts_with("rediss://") {
            if url.contains('#') {
                return Err(ConfigError::new(
                    format!("{key}.url"),
                    "no fragment (#insecure turns the certificate check off, which lessor never does)",
                ));
            }
            // The SDK's checks, as for the SQL plugins: readable files, a
            // private key, a certificate and its key together.
            let files = TlsFiles {
                ca_file: options.tls_ca_file.clone(),
                client_cert_file: options.tls_client_cert_file.clone(),
                client_key_file: options.tls_client_key_file.clone(),
            };
            let settings =
                TlsSettings { mode: TlsMode::VerifyFull, files: files.clone(), explicit: true, local: false };
            settings.check(&key, "url")?;
            let read = |field: &str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| {
                    ConfigError::new(format!("{key}.{field}"), format!("{}: {e}", path.display()))
                })
            };
            let ca = files.ca_file.as_deref().map(|p| read("tls_ca_file", p)).transpose()?;
            let client = match (&files.client_cert_file, &files.client_key_file) {
                (Some(cert), Some(pem)) => {
                    Some((read("tls_client_cert_file", cert)?, read("tls_client_key_file", pem)?))
                }
                _ => None,
            };
            Some(Tls { ca, client })
        } else if url.starts_with("redis://") {
            let set = [&options.tls_ca_file, &options.tls_client_cert_file, &options.tls_client_key_file];
            if set.iter().any(|o| o.is_some()) {
                return Err(ConfigError::new(
                    format!("{key}.tls_ca_file"),
                    "TLS files need a rediss:// URL; this one is plaintext",
                ));
            }
            None
        } else {
            return Err(ConfigError::new(
                format!("{key}.url"),
                "must start with redis:// or rediss:// (TLS)",
            ));
        };
        let info = url.into_connection_info().map_err(|e| {
            ConfigError::new(format!("{key}.url"), format!("not a Redis URL: {:?}", e.kind()))
        })?;
        if info.redis_settings().password().is_some() {
            return Err(ConfigError::new(
                format!("{key}.url"),
                "the URL contains a password; remove it and use password_file or password_env",
            ));
        }
        let admin = info.redis_settings().username().map(str::to_string);
        let settings = match &ctx.password {
            Some(password) => info.redis_settings().clone().set_password(password.expose_secret()),
            None => info.redis_settings().clone(),
        };
        let info = info.set_redis_settings(settings);
        Ok(Self {
            connection: ctx.name.to_string(),
            info,
            tls,
            manager: OnceCell::new(),
            saves: OnceCell::new(),
            operation_timeout: ctx.operation_timeout,
            admin,
        })
    }

    async fn manager(&self, cx: &Context<'_>) -> Result<ConnectionManager, PluginError> {
        self.manager
            .get_or_try_init(|| async {
                let client = match &self.tls {
                    None => redis::Client::open(self.info.clone()),
                    Some(tls) => {
                        // The process's one rustls provider, as the SQL plugins use.
                        lessor_plugin::tls::provider();
                        let certs = redis::TlsCertificates {
                            client_tls: tls.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                                client_cert: cert.clone(),
                                client_key: key.clone(),
                            }),
                            root_cert: tls.ca.clone(),
                        };
                        redis::Client::build_with_tls(self.info.clone(), certs)
                    }
                }
                .map_err(|e| classify(&e, cx, &Redactor::default()))?;
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(self.operation_timeout))
                    .set_response_timeout(Some(self.operation_timeout));
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|e| classify(&e, cx, &Redactor::default()))
            })
            .await
            .cloned()
    }

    /// Saves the users to the server's `aclfile`, if it has one, so a
    /// restart of the server keeps lessor's changes (a revoked user stays
    /// gone). What cannot be saved is said in the log; the change itself
    /// stands.
    async fn save(&self, conn: &mut ConnectionManager) {
        let saves = *self
            .saves
            .get_or_init(|| async {
                let got: Result<Vec<String>, RedisError> =
                    redis::cmd("CONFIG").arg("GET").arg("aclfile").query_async(&mut conn.clone()).await;
                match got {
                    Ok(pair) => pair.get(1).is_some_and(|file| !file.is_empty()),
                    Err(e) => {
                        warn!(connection = %self.connection, error = %e,
                            "cannot read whether the server has an aclfile (grant +config|get): \
                             changes are not saved to one");
                        false
                    }
                }
            })
            .await;
        if saves {
            let saved: Result<String, RedisError> = redis::cmd("ACL").arg("SAVE").query_async(conn).await;
            if let Err(e) = saved {
                warn!(connection = %self.connection, error = %e,
                    "ACL SAVE failed (grant +acl|save): the server's aclfile does not hold the latest users");
            }
        }
    }

    /// Ends `username`'s sessions and deletes it; one that is not there
    /// counts as done.
    async fn remove(&self, username: &str, cx: &Context<'_>) -> Result<(), PluginError> {
        failure::check_username(username, MAX_USERNAME_LEN, b"-", cx)?;
        let mut conn = self.manager(cx).await?;
        let redactor = Redactor::default();
        let killed: Result<i64, RedisError> =
            redis::cmd("CLIENT").arg("KILL").arg("USER").arg(username).query_async(&mut conn).await;
        match killed {
            Ok(_) => {}
            // "No such user": never made, or deleted already.
            Err(e)
                if e.kind() == ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    && is_no_such_user(&e) => {}
            Err(e) => return Err(classify(&e, &cx.step("CLIENT KILL USER", false), &redactor)),
        }
        let deleted: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(username)
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &cx.step("ACL DELUSER", false), &redactor))?;
        debug!(connection = %self.connection, username, deleted, "revoked");
        if deleted > 0 {
            self.save(&mut conn).await;
        }
        Ok(())
    }
}

fn is_no_such_user(e: &RedisError) -> bool {
    e.to_string().to_ascii_lowercase().contains("no such user")
}

/// A Redis failure as the broker's classes: I/O and timeouts are retryable,
/// a refusal by the server is not. Messages are scrubbed by `redactor`.
fn classify(e: &RedisError, cx: &Context<'_>, redactor: &Redactor) -> PluginError {
    let message = format!("{}{}", cx.prefix(), redactor.scrub(&e.to_string()));
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        PluginError::Unavailable { message }
    } else {
        PluginError::Rejected { message }
    }
}

#[async_trait]
impl Plugin for RedisPlugin {
    fn name(&self) -> &'static str {
        crate::PLUGIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        // Renewal is the lease's only: a Redis user has no expiry.
        Capabilities { renewable: true, revocable: true, max_username_len: MAX_USERNAME_LEN }
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(std::sync::Arc::new(parse_role(role, options)?))
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Verify, None);
        let mut conn = self.manager(&cx).await?;
        let _: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &cx, &Redactor::default()))?;
        Ok(())
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let username = request.username;
        let cx = Context::new(Operation::Create, Some(username));
        failure::check_username(username, MAX_USERNAME_LEN, b"-", &cx)?;
        let role = downcast_role::<RedisRole>(request.settings)?;
        let password = request.password.expose_secret();
        let redactor = Redactor::new([password]);
        let mut conn = self.manager(&cx).await?;
        // Nothing is granted but the role's rules; the user is on only once
        // they and its password are set, in the same command.
        let mut command = redis::cmd("ACL");
        command.arg("SETUSER").arg(username).arg("reset").arg("resetchannels").arg("-@all");
        for rule in &role.acl_rules {
            command.arg(rule);
        }
        command.arg(format!(">{password}")).arg("on");
        let made: Result<String, RedisError> = command.query_async(&mut conn).await;
        if let Err(e) = made {
            return Err(classify(&e, &cx.step("ACL SETUSER", true), &redactor));
        }
        self.save(&mut conn).await;
        Ok(Created::new(Credential::Database {
            username: username.to_string(),
            password: SecretString::from(password.to_string()),
        }))
    }

    async fn renew(&self, _lease: &LeaseRef<'_>, _expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        Ok(())
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        let cx = Context::new(Operation::Revoke, Some(lease.username));
        self.remove(lease.username, &cx).await
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let cx = Context::new(Operation::ListUsers, None);
        let mut conn = self.manager(&cx).await?;
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut conn)
            .await
            .map_err(|e| classify(&e, &cx, &Redactor::default()))?;
        Ok(users
            .into_iter()
            .filter(|u| u.starts_with(prefix) && Some(u) != self.admin.as_ref())
            .map(|name| BackendUser { name, created_at: None })
            .collect())
    }

    fn admin_username(&self) -> Option<String> {
        self.admin.clone()
    }
}
