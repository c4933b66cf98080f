//! Revoking many users at once: the default recipe of `client` over a whole
//! batch, with one statement per step instead of one per user:
//! `ALTER USER a@h, b@h, … ACCOUNT LOCK`, `KILL CONNECTION` for every
//! connection of any of them, `DROP USER IF EXISTS a@h, b@h, …`, and the
//! kill again for connections that raced the lock.
//!
//! Every account of the users is read from `mysql.user` first (lessor never
//! guesses hosts). When any step fails, the broker revokes every lease of
//! the batch one by one, so one bad lease cannot block the others and its
//! error is its own. Leases with revocation statements of their own never
//! go in a batch.

use lessor_plugin::failure::{Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::{downcast_role, LeaseRef, PluginError};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use tracing::debug;

use crate::client::{account, MySqlPlugin};
use crate::config::MySqlRole;
use crate::error::{code, server_code};

impl MySqlPlugin {
    /// [`Plugin::revoke_batch`]: `Ok` when every user of the batch is gone.
    pub(crate) async fn revoke_many(&self, leases: &[LeaseRef<'_>]) -> Result<(), PluginError> {
        if !leases.iter().all(uses_default_recipe) {
            return Err(PluginError::Unsupported { operation: "revoke_batch with revocation_statements" });
        }
        let usernames: Vec<&str> = leases.iter().map(|l| l.username).collect();
        if self.revoke_together(&usernames).await {
            debug!(operation = "revoke", connection = %self.connection, users = usernames.len(), "revoked as one batch");
            Ok(())
        } else {
            debug!(operation = "revoke", connection = %self.connection, users = usernames.len(), "batch failed; revoking one by one");
            Err(PluginError::Unavailable { message: "the batched revocation failed".into() })
        }
    }

    /// The batched recipe; `true` when every step succeeded (or found a
    /// user already gone).
    async fn revoke_together(&self, usernames: &[&str]) -> bool {
        let cx = Context::new(Operation::Revoke, None);
        if usernames.iter().any(|u| self.check_username(u, &cx).is_err()) {
            return false;
        }
        let Ok(conn) = self.get(&cx, &Redactor::default()).await else { return false };
        let work = async |conn: &mut Conn| recipe(conn, usernames).await.unwrap_or(false);
        matches!(self.bounded(conn, &cx, work).await, Ok((true, _)))
    }
}

/// `None` when a step failed in a way the one-by-one path must look at.
async fn recipe(conn: &mut Conn, usernames: &[&str]) -> Option<bool> {
    let marks = vec!["?"; usernames.len()].join(", ");
    let names: Vec<mysql_async::Value> = usernames.iter().map(|u| (*u).into()).collect();
    let accounts: Vec<(String, String)> = conn
        .exec(format!("SELECT User, Host FROM mysql.user WHERE User IN ({marks})"), names.clone())
        .await
        .ok()?;
    if !accounts.is_empty() {
        let list = accounts.iter().map(|(user, host)| account(user, host)).collect::<Vec<_>>().join(", ");
        // Servers without ACCOUNT LOCK fail here too: the one-by-one path
        // knows to skip the lock there.
        conn.query_drop(format!("ALTER USER {list} ACCOUNT LOCK")).await.ok()?;
        kill(conn, &marks, &names).await?;
        conn.query_drop(format!("DROP USER IF EXISTS {list}")).await.ok()?;
    }
    kill(conn, &marks, &names).await?;
    Some(true)
}

/// `KILL CONNECTION` for every connection of the users.
async fn kill(conn: &mut Conn, marks: &str, names: &[mysql_async::Value]) -> Option<()> {
    let ids: Vec<u64> = conn
        .exec(
            format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER IN ({marks}) AND ID <> CONNECTION_ID()"),
            names.to_vec(),
        )
        .await
        .ok()?;
    for id in ids {
        match conn.query_drop(format!("KILL CONNECTION {id}")).await {
            Ok(()) => {}
            Err(e) if server_code(&e) == Some(code::NO_SUCH_THREAD) => {}
            Err(_) => return None,
        }
    }
    Some(())
}

/// Whether the lease is revoked with the plugin's default recipe.
fn uses_default_recipe(lease: &LeaseRef<'_>) -> bool {
    match lease.settings {
        None => true,
        Some(settings) => downcast_role::<MySqlRole>(settings).is_ok_and(|role| role.revocation.is_none()),
    }
}
