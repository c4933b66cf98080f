//! The admin's connections: the pool and the options it is built on, the
//! one-off connections outside it (`KILL QUERY`, a static account's login
//! test), and what TLS asks of them: `preferred` falling back to plaintext
//! one connection at a time, and `verify_ca`'s certificate name (see
//! `tls`). Every statement runs under `operation_timeout` through
//! [`MySqlPlugin::bounded`].

use std::sync::atomic::Ordering;

use lessor_plugin::deadline::{self, Bounded};
use lessor_plugin::failure::{Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::tls::TlsMode;
use lessor_plugin::PluginError;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, warn};

use crate::client::{MySqlPlugin, POOL_WAIT_TIMEOUT};
use crate::error::classify;
use crate::tls;

impl MySqlPlugin {
    /// The admin's connection options.
    pub(crate) fn opts(&self) -> Opts {
        self.opts.read().unwrap().clone()
    }

    /// From now on, admin connections log in with `password` (the admin's
    /// own password was rotated). The old pool's idle connections close as
    /// it is dropped; those in use finish their work.
    pub(crate) fn switch_admin_password(&self, password: &SecretString) {
        self.update_opts(|opts| opts.pass(Some(password.expose_secret())));
        debug!(connection = %self.connection, "admin connections now use the rotated password");
    }

    /// Changes the options and replaces the pool built on them, as one
    /// step (a rotated password and a `verify_ca` name cannot undo each
    /// other). The old pool's idle connections close as it is dropped;
    /// those in use finish their work.
    fn update_opts(&self, change: impl FnOnce(OptsBuilder) -> OptsBuilder) {
        let mut opts = self.opts.write().unwrap();
        *opts = Opts::from(change(OptsBuilder::from_opts(opts.clone())));
        let old = std::mem::replace(&mut *self.pool.write().unwrap(), Pool::new(opts.clone()));
        tokio::spawn(async move {
            let _ = old.disconnect().await;
        });
    }

    pub(crate) async fn get(&self, cx: &Context<'_>, redactor: &Redactor) -> Result<Conn, PluginError> {
        self.ensure_ca_name(cx, None).await?;
        match self.get_once().await {
            Ok(conn) => Ok(conn),
            // `preferred` and a server without TLS: this connection is
            // plaintext (and unpooled); the next one tries TLS again.
            Err(Some(e)) if self.plaintext_allowed(&e) => {
                let opts = OptsBuilder::from_opts(self.opts()).ssl_opts(None::<mysql_async::SslOpts>);
                match tokio::time::timeout(POOL_WAIT_TIMEOUT, Conn::new(opts)).await {
                    Ok(result) => result.map_err(|e| self.classify_connect(Some(e), cx, redactor)),
                    Err(_) => Err(self.classify_connect(None, cx, redactor)),
                }
            }
            // `verify_ca` and a certificate without the name found before
            // (it was replaced): look once more.
            Err(Some(e))
                if self.tls.effective() == TlsMode::VerifyCa && lessor_plugin::tls::is_name_mismatch(&e) =>
            {
                let stale = self.ca_name.lock().unwrap().clone();
                self.ensure_ca_name(cx, stale).await?;
                self.get_once().await.map_err(|e| self.classify_connect(e, cx, redactor))
            }
            Err(e) => Err(self.classify_connect(e, cx, redactor)),
        }
    }

    /// Opens a connection outside the pool: `change` adjusts the admin's
    /// options (another user, say); falls back to plaintext as
    /// `preferred` allows.
    pub(crate) async fn connect(
        &self,
        cx: &Context<'_>,
        redactor: &Redactor,
        change: impl FnOnce(OptsBuilder) -> OptsBuilder,
    ) -> Result<Conn, PluginError> {
        self.ensure_ca_name(cx, None).await?;
        let opts = change(OptsBuilder::from_opts(self.opts()));
        match Conn::new(opts.clone()).await {
            Err(e) if self.plaintext_allowed(&e) => Conn::new(opts.ssl_opts(None::<mysql_async::SslOpts>))
                .await
                .map_err(|e| self.classify_connect(Some(e), cx, redactor)),
            other => other.map_err(|e| self.classify_connect(Some(e), cx, redactor)),
        }
    }

    /// Whether `err` lets `preferred` go on without TLS; logged once.
    fn plaintext_allowed(&self, err: &mysql_async::Error) -> bool {
        let allowed = self.tls.mode == TlsMode::Prefer && tls::is_no_tls_offered(err);
        if allowed && !self.plaintext_logged.swap(true, Ordering::Relaxed) {
            warn!(connection = %self.connection, target = %self.target, "the server offers no TLS; connecting in plaintext (tls_mode = \"preferred\")");
        }
        allowed
    }

    /// `verify_ca`: makes sure a name the server's (chain-verified)
    /// certificate carries is known and the driver verifies against it;
    /// with `stale`, looks again if that is still the name in use.
    async fn ensure_ca_name(&self, cx: &Context<'_>, stale: Option<String>) -> Result<(), PluginError> {
        if self.tls.effective() != TlsMode::VerifyCa {
            return Ok(());
        }
        let needed = || {
            let known = self.ca_name.lock().unwrap();
            known.is_none() || (stale.is_some() && *known == stale)
        };
        if !needed() {
            return Ok(());
        }
        let fail = |why: String| PluginError::Unavailable {
            message: self.tls.failure(
                &cx.prefix(),
                &self.target,
                &self.connection,
                TlsMode::mysql_name,
                &why,
            ),
        };
        let _probing = tokio::time::timeout(POOL_WAIT_TIMEOUT, self.ca_probe.lock())
            .await
            .map_err(|_| fail("another look at the server's certificate is taking too long".into()))?;
        if !needed() {
            return Ok(());
        }
        let (host, port) = self.tcp_target.as_ref().expect("a socket connection never uses TLS");
        let name = tls::certificate_name(host, *port, &self.tls, POOL_WAIT_TIMEOUT).await.map_err(fail)?;
        let ssl = tls::ssl_opts(&self.tls, Some(&name)).map_err(fail)?;
        self.update_opts(|opts| opts.ssl_opts(ssl));
        debug!(connection = %self.connection, certificate_name = %name, "verify_ca: connections are verified against the name the certificate carries");
        *self.ca_name.lock().unwrap() = Some(name);
        Ok(())
    }

    /// Classifies a failed connection attempt (`None`: the pool timed out);
    /// a failed TLS handshake names the connection, the server and why.
    pub(crate) fn classify_connect(
        &self,
        err: Option<mysql_async::Error>,
        cx: &Context<'_>,
        redactor: &Redactor,
    ) -> PluginError {
        match err {
            Some(e) => match tls::failure(&e) {
                Some(why) => PluginError::Unavailable {
                    message: self.tls.failure(&cx.prefix(), &self.target, &self.connection, TlsMode::mysql_name, &why),
                },
                None => classify(&e, cx, redactor),
            },
            None => PluginError::Unavailable {
                message: format!(
                    "{}: no admin connection within {}s (server unreachable, or all {} in use: raise max_connections?)",
                    cx.prefix(),
                    POOL_WAIT_TIMEOUT.as_secs(),
                    self.max_connections
                ),
            },
        }
    }

    /// One attempt to get an admin connection; `Err(None)` when the pool
    /// gave none in time.
    async fn get_once(&self) -> Result<Conn, Option<mysql_async::Error>> {
        let pool = self.pool.read().unwrap().clone();
        match tokio::time::timeout(POOL_WAIT_TIMEOUT, pool.get_conn()).await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// Runs `work` on `conn` bounded by `operation_timeout`. On overrun the
    /// statement is killed (`KILL QUERY`, from a connection of its own),
    /// `work` is driven until the server reports back, and `conn` is closed
    /// rather than returned to the pool; the operation fails as
    /// `Unavailable`. Otherwise `work`'s result and the connection.
    pub(crate) async fn bounded<T>(
        &self,
        mut conn: Conn,
        cx: &Context<'_>,
        work: impl AsyncFnOnce(&mut Conn) -> T,
    ) -> Result<(T, Conn), PluginError> {
        let id = conn.id();
        let outcome = deadline::run(self.operation_timeout, work(&mut conn), || self.kill_query(id)).await;
        match outcome {
            Bounded::Done(out) => Ok((out, conn)),
            Bounded::TimedOut { settled } => {
                // COM_QUIT needs no answer; bounded all the same.
                let _ = tokio::time::timeout(deadline::CANCEL_GRACE, conn.disconnect()).await;
                debug!(connection = %self.connection, username = cx.username.unwrap_or(""), settled, "operation timed out; statement killed, connection closed");
                Err(deadline::timed_out(&cx.prefix(), self.operation_timeout, settled))
            }
        }
    }

    /// Stops the statement connection `id` is running, from a connection
    /// opened for the purpose (the pool may have none free).
    async fn kill_query(&self, id: u32) {
        let cx = Context::new(Operation::Revoke, None).step("KILL QUERY", false);
        let redactor = Redactor::default();
        let kill = async {
            let mut conn = self.connect(&cx, &redactor, |opts| opts).await?;
            conn.query_drop(format!("KILL QUERY {id}")).await.map_err(|e| classify(&e, &cx, &redactor))?;
            conn.disconnect().await.map_err(|e| classify(&e, &cx, &redactor))
        };
        if let Err(e) = kill.await {
            debug!(connection = %self.connection, error = %e, "killing a timed-out statement failed; its connection is closed instead");
        }
    }
}
