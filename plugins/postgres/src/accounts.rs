//! Accounts whose life lessor does not own (static accounts): set a
//! password, prove it by logging in with it, end the sessions of a retired
//! credential. Each is bounded by `operation_timeout` and cancelled on the
//! server when it runs over, like the lease operations in `client`.

use lessor_plugin::deadline::{self, Bounded};
use lessor_plugin::failure::{Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::PluginError;
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use crate::client::{check_username, quote_ident, scram_verifier, PgPlugin};
use crate::config::PasswordEncoding;
use crate::error::{classify, with_verifier_parts};

impl PgPlugin {
    /// `ALTER ROLE … WITH PASSWORD`, with a SCRAM verifier unless the
    /// connection sends plaintext. The statement is never logged.
    pub(crate) async fn set_account_password(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(), PluginError> {
        let cx = Context::new(Operation::SetPassword, Some(username));
        check_username(username, &cx)?;
        let sent = match self.encoding {
            PasswordEncoding::ScramSha256 => scram_verifier(password.clone(), self.scram_iterations).await?,
            PasswordEncoding::Plaintext => password.clone(),
        };
        let redactor = Redactor::new(with_verifier_parts([password.expose_secret(), sent.expose_secret()]));
        let sql = SecretString::from(format!(
            "ALTER ROLE {} WITH PASSWORD '{}'",
            quote_ident(username),
            sent.expose_secret().replace('\'', "''")
        ));
        let client = self.get(&cx, &redactor).await?;
        let token = client.cancel_token();
        let work = async { client.batch_execute(sql.expose_secret()).await };
        match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(result) => {
                result.map_err(|e| classify(&e, &cx.step("ALTER ROLE PASSWORD", false), &redactor))?
            }
            Bounded::TimedOut { settled } => return Err(self.abandon(client, settled, &cx)),
        }
        debug!(connection = %self.connection, username, "password set");
        Ok(())
    }

    /// Opens a connection of its own as `username` and runs `SELECT 1`.
    pub(crate) async fn login_as(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::TestLogin, Some(username));
        let redactor = Redactor::new([password.expose_secret()]);
        let mut config = self.login_config.read().unwrap().clone();
        config.user(username).password(password.expose_secret()).connect_timeout(self.operation_timeout);
        let login = async {
            let (client, driver) = self.tls.connect(&config).await?;
            let result = client.batch_execute("SELECT 1").await;
            drop(client);
            let _ = driver.await;
            result
        };
        match tokio::time::timeout(self.operation_timeout, login).await {
            Ok(Ok(())) => {
                debug!(connection = %self.connection, username, "login test passed");
                Ok(())
            }
            Ok(Err(e)) => Err(self.classify_connect(&e, &cx, &redactor)),
            Err(_) => Err(deadline::timed_out(&cx.prefix(), self.operation_timeout, true)),
        }
    }

    /// `pg_terminate_backend` on every session of `username` (the admin
    /// needs `pg_signal_backend`, or membership of the role).
    pub(crate) async fn terminate_sessions(&self, username: &str) -> Result<(), PluginError> {
        let cx = Context::new(Operation::EndSessions, Some(username));
        let redactor = Redactor::default();
        let client = self.get(&cx, &redactor).await?;
        let token = client.cancel_token();
        let work =
            async { client.query(&crate::revoke::end_sessions_sql("ARRAY[$1]::name[]"), &[&username]).await };
        let rows = match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(result) => result.map_err(|e| classify(&e, &cx, &redactor))?,
            Bounded::TimedOut { settled } => return Err(self.abandon(client, settled, &cx)),
        };
        debug!(connection = %self.connection, username, sessions = rows.len(), "sessions ended");
        Ok(())
    }
}
