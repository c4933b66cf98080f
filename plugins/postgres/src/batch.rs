//! Revoking many roles at once: the default recipe of `client` over a whole
//! batch in three messages sent together, so a mass expiry or a
//! `revoke -prefix` costs one round trip per batch instead of one per role:
//!
//! 1. `ALTER ROLE … NOLOGIN` for every role, one transaction, committed on
//!    its own so it sticks whatever follows;
//! 2. membership of the roles (PostgreSQL 15 does not give it to the
//!    CREATEROLE admin that made them);
//! 3. `pg_terminate_backend` over the roles' sessions, `REASSIGN OWNED BY
//!    a, b, …`, `DROP OWNED BY a, b, …`, `DROP ROLE IF EXISTS a, b, …`: one
//!    implicit transaction, so the roles are dropped only if their sessions
//!    could be signalled.
//!
//! Roles already gone are left out first (a missing role would abort the
//! statements). When any message fails (step 3 may still have dropped the
//! roles, which the retry then finds gone), the broker revokes every lease
//! of the batch one by one, so one bad lease (a role owning objects in a
//! database the admin cannot reach, say) cannot block the others, and its
//! error is its own. Leases with revocation statements of their own never
//! go in a batch.

use deadpool_postgres::Object;
use lessor_plugin::deadline::{self, Bounded};
use lessor_plugin::failure::{Context, Operation};
use lessor_plugin::redact::Redactor;
use lessor_plugin::{downcast_role, LeaseRef, PluginError};
use tracing::debug;

use crate::client::{check_username, quote_ident, PgPlugin};
use crate::config::PgRole;
use crate::revoke::{end_sessions_of, pipelined};

impl PgPlugin {
    /// [`Plugin::revoke_batch`]: `Ok` when every role of the batch is gone.
    pub(crate) async fn revoke_many(&self, leases: &[LeaseRef<'_>]) -> Result<(), PluginError> {
        let unbatchable =
            || PluginError::Unsupported { operation: "revoke_batch with revocation_statements" };
        if !leases.iter().all(uses_default_recipe) {
            return Err(unbatchable());
        }
        let usernames: Vec<&str> = leases.iter().map(|l| l.username).collect();
        if self.revoke_together(&usernames).await {
            debug!(operation = "revoke", connection = %self.connection, roles = usernames.len(), "revoked as one batch");
            Ok(())
        } else {
            debug!(operation = "revoke", connection = %self.connection, roles = usernames.len(), "batch failed; revoking one by one");
            Err(PluginError::Unavailable { message: "the batched revocation failed".into() })
        }
    }

    /// The batched recipe; `true` when every role is gone afterwards and
    /// every step succeeded (or found a role already gone).
    async fn revoke_together(&self, usernames: &[&str]) -> bool {
        let cx = Context::new(Operation::Revoke, None);
        if usernames.iter().any(|u| check_username(u, &cx).is_err()) {
            return false;
        }
        let Ok(client) = self.get(&cx, &Redactor::default()).await else { return false };
        let token = client.cancel_token();
        let work = recipe(&client, usernames);
        match deadline::run(self.operation_timeout, work, || self.tls.cancel(token)).await {
            Bounded::Done(done) => done,
            Bounded::TimedOut { .. } => {
                drop(Object::take(client));
                false
            }
        }
    }
}

async fn recipe(client: &Object, usernames: &[&str]) -> bool {
    let names: Vec<String> = usernames.iter().map(|u| u.to_string()).collect();
    let present: Vec<String> =
        match client.query("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)", &[&names]).await {
            Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
            Err(_) => return false,
        };
    if present.is_empty() {
        return true;
    }
    let idents = present.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ");
    let nologin = present
        .iter()
        .map(|n| format!("ALTER ROLE {} NOLOGIN", quote_ident(n)))
        .collect::<Vec<_>>()
        .join("; ");
    let grant = format!("GRANT {idents} TO CURRENT_USER");
    let end = format!(
        "{}; \
         REASSIGN OWNED BY {idents} TO CURRENT_USER; \
         DROP OWNED BY {idents}; \
         DROP ROLE IF EXISTS {idents}",
        end_sessions_of(&present)
    );
    let results = pipelined(client, [&nologin, &grant, &end]).await;
    // A superuser admin needs no membership and may fail to get it.
    results[0].is_ok() && results[2].is_ok()
}

/// Whether the lease is revoked with the plugin's default recipe (no
/// revocation statements of its role's own).
fn uses_default_recipe(lease: &LeaseRef<'_>) -> bool {
    match lease.settings {
        None => true,
        Some(settings) => downcast_role::<PgRole>(settings).is_ok_and(|role| role.revocation.is_none()),
    }
}
