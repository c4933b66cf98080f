//! Accounts whose life lessor does not own (static accounts): set a
//! password for every host the user exists with, prove it by logging in
//! with it, end the sessions of a retired credential. Each is bounded by
//! `operation_timeout` and killed on the server when it runs over.

use lessor_plugin::failure::{Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::{deadline, PluginError};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use crate::client::{account, Flavor, MySqlPlugin};
use crate::config::{native_password_hash, MySqlPasswordEncoding};
use crate::error::classify;

impl MySqlPlugin {
    /// `ALTER USER … IDENTIFIED BY` for every host of `username` (with the
    /// `mysql_native_password` hash instead when the connection sends
    /// hashes). The statement is never logged.
    pub(crate) async fn set_account_password(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<(), PluginError> {
        let cx = Context::new(Operation::SetPassword, Some(username));
        self.check_username(username, &cx)?;
        let hash = native_password_hash(password.expose_secret());
        let redactor = Redactor::new([password.expose_secret(), hash.as_str()]);
        let conn = self.get(&cx, &redactor).await?;
        let work = async |conn: &mut Conn| {
            let hosts = self.hosts_to_drop(conn, username, &cx).await?;
            if hosts.is_empty() {
                return Err(PluginError::Rejected {
                    message: format!("{}: the user does not exist", cx.prefix()),
                });
            }
            let flavor = self.flavor(conn, &cx).await?;
            for host in hosts {
                let identified = match (self.encoding, flavor) {
                    (MySqlPasswordEncoding::Plaintext, _) => {
                        format!("IDENTIFIED BY '{}'", password.expose_secret())
                    }
                    (MySqlPasswordEncoding::MysqlNativePassword, Flavor::MariaDb) => {
                        format!("IDENTIFIED BY PASSWORD '{hash}'")
                    }
                    (MySqlPasswordEncoding::MysqlNativePassword, Flavor::MySql) => {
                        format!("IDENTIFIED WITH mysql_native_password AS '{hash}'")
                    }
                };
                let sql = SecretString::from(format!("ALTER USER {} {identified}", account(username, &host)));
                conn.query_drop(sql.expose_secret())
                    .await
                    .map_err(|e| classify(&e, &cx.step("ALTER USER IDENTIFIED BY", false), &redactor))?;
            }
            Ok(())
        };
        self.bounded(conn, &cx, work).await?.0?;
        debug!(connection = %self.connection, username, "password set");
        Ok(())
    }

    /// Opens a connection of its own as `username` and runs `SELECT 1`.
    pub(crate) async fn login_as(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let cx = Context::new(Operation::TestLogin, Some(username));
        let redactor = Redactor::new([password.expose_secret()]);
        let login = async {
            let mut conn = self
                .connect(&cx, &redactor, |opts| {
                    opts.user(Some(username)).pass(Some(password.expose_secret())).db_name(None::<String>)
                })
                .await?;
            conn.query_drop("SELECT 1").await.map_err(|e| classify(&e, &cx, &redactor))?;
            conn.disconnect().await.map_err(|e| classify(&e, &cx, &redactor))
        };
        match tokio::time::timeout(self.operation_timeout, login).await {
            Ok(Ok(())) => {
                debug!(connection = %self.connection, username, "login test passed");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(deadline::timed_out(&cx.prefix(), self.operation_timeout, true)),
        }
    }

    /// `KILL CONNECTION` for every session of `username`.
    pub(crate) async fn end_account_sessions(&self, username: &str) -> Result<(), PluginError> {
        let cx = Context::new(Operation::EndSessions, Some(username));
        let conn = self.get(&cx, &Redactor::default()).await?;
        let work = async |conn: &mut Conn| self.kill_sessions(conn, username, &cx).await;
        let killed = self.bounded(conn, &cx, work).await?.0?;
        debug!(connection = %self.connection, username, killed, "sessions ended");
        Ok(())
    }
}
