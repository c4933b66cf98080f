//! One Redis server of a connection: its address, the admin's connection
//! to it, and whether it keeps its users in an `aclfile`.
//!
//! Redis Cluster shards and replicas each keep their own users, so a
//! connection with `nodes = [...]` holds one [`Node`] per server and
//! applies every change to each.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::PluginError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use tracing::warn;

/// The PEM files of a TLS connection, read at load.
#[derive(Clone)]
pub(crate) struct Tls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

pub(crate) struct Node {
    /// `host:port`, for messages (never a password).
    pub address: String,
    admin: Mutex<Admin>,
    tls: Option<Tls>,
    /// Whether the server keeps its users in an `aclfile`; read on first use.
    saves: OnceCell<bool>,
    timeout: Duration,
}

/// How the admin logs in to the server, and its connection.
struct Admin {
    /// Where and as whom: the admin's username and password.
    info: redis::ConnectionInfo,
    /// Counts password changes, so a connection made with an older one is
    /// not kept.
    generation: u64,
    /// Made on first use and kept (commands are pipelined on it, so one
    /// connection serves concurrent issuance).
    manager: Option<ConnectionManager>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(info: redis::ConnectionInfo, tls: Option<Tls>, timeout: Duration) -> Self {
        let address = info.addr().to_string();
        Self {
            address,
            admin: Mutex::new(Admin { info, generation: 0, manager: None }),
            tls,
            saves: OnceCell::new(),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admin> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client for this server as `info` says (the admin, or a user whose
    /// login is tested), with the connection's TLS settings.
    fn client(&self, info: redis::ConnectionInfo) -> Result<redis::Client, RedisError> {
        match &self.tls {
            None => redis::Client::open(info),
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
                redis::Client::build_with_tls(info, certs)
            }
        }
    }

    /// The admin's connection, made when there is none.
    pub async fn admin(&self, cx: &Context<'_>) -> Result<ConnectionManager, PluginError> {
        let (info, generation) = {
            let admin = self.lock();
            if let Some(manager) = &admin.manager {
                return Ok(manager.clone());
            }
            (admin.info.clone(), admin.generation)
        };
        let fail = |e: RedisError| self.error(&e, cx, &Redactor::default());
        let client = self.client(info).map_err(fail)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let manager = client.get_connection_manager_with_config(config).await.map_err(fail)?;
        let mut admin = self.lock();
        match &admin.manager {
            // Another caller made one meanwhile: one is enough.
            Some(made) => return Ok(made.clone()),
            None if admin.generation == generation => admin.manager = Some(manager.clone()),
            // Made with a password replaced meanwhile: used once, not kept.
            None => {}
        }
        Ok(manager)
    }

    /// From now on the admin logs in with `password`; the open connection
    /// is dropped, so the next command makes one with it (a connection
    /// manager reconnects with the password it was made with).
    pub fn use_admin_password(&self, password: &SecretString) {
        let mut admin = self.lock();
        let settings = admin.info.redis_settings().clone().set_password(password.expose_secret());
        admin.info = admin.info.clone().set_redis_settings(settings);
        admin.generation += 1;
        admin.manager = None;
    }

    /// Logs in as `username` with `password` over a connection of its own
    /// and pings: a rotation's test that the login works.
    pub async fn test_login(
        &self,
        username: &str,
        password: &SecretString,
        cx: &Context<'_>,
        redactor: &Redactor,
    ) -> Result<(), PluginError> {
        let info = self.lock().info.clone();
        let settings =
            info.redis_settings().clone().set_username(username).set_password(password.expose_secret());
        let client =
            self.client(info.set_redis_settings(settings)).map_err(|e| self.error(&e, cx, redactor))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.error(&e, cx, redactor))?;
        // The connection logged in as it was made; the PING proves the
        // server took it. A user whose rules leave out PING (lessor's own
        // admin) is told NOPERM, which only a logged-in user is told.
        let pinged: Result<String, RedisError> = redis::cmd("PING").query_async(&mut conn).await;
        match pinged {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => Ok(()),
            Err(e) => Err(self.error(&e, cx, redactor)),
        }
    }

    /// Saves the users to the server's `aclfile`, if it has one, so a
    /// restart of the server keeps lessor's changes (a revoked user stays
    /// gone). What cannot be saved is said in the log; the change itself
    /// stands.
    pub async fn save(&self, conn: &mut ConnectionManager, connection: &str) {
        let saves = *self
            .saves
            .get_or_init(|| async {
                let got: Result<Vec<String>, RedisError> =
                    redis::cmd("CONFIG").arg("GET").arg("aclfile").query_async(&mut conn.clone()).await;
                match got {
                    Ok(pair) => pair.get(1).is_some_and(|file| !file.is_empty()),
                    Err(e) => {
                        warn!(connection, node = %self.address, error = %e,
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
                warn!(connection, node = %self.address, error = %e,
                    "ACL SAVE failed (grant +acl|save): the server's aclfile does not hold the latest users");
            }
        }
    }

    /// A failure on this server as the broker's classes: I/O and timeouts
    /// are retryable, a refusal by the server is not. The message names the
    /// server and is scrubbed by `redactor`.
    pub fn error(&self, e: &RedisError, cx: &Context<'_>, redactor: &Redactor) -> PluginError {
        let message = format!("{} on {}: {}", cx.prefix(), self.address, redactor.scrub(&e.to_string()));
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            PluginError::Unavailable { message }
        } else {
            PluginError::Rejected { message }
        }
    }
}
