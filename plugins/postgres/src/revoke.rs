//! Revoking one role with the default recipe (three pipelined messages,
//! then the steps one by one to find out which failed and why) or with the
//! role's own revocation statements; `batch` runs the same recipe over many
//! roles at once.

use deadpool_postgres::Object;
use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::template::{Template, Values};
use lessor_plugin::PluginError;
use secrecy::ExposeSecret;
use tokio_postgres::error::SqlState;
use tracing::debug;

use crate::client::{check_username, is_undefined_object, quote_ident, role_exists, PgPlugin};
use crate::error::classify;

/// The statement that ends every session of the roles named by `names`,
/// an SQL expression of type `name[]`. It finds the sessions through
/// `pg_stat_get_backend_idset()` and the user id of each rather than
/// through `pg_stat_activity`: the view checks the admin's privileges over
/// every session's role, and while a mass revocation changes role
/// memberships PostgreSQL works out the admin's memberships again for each
/// such check, a tenth of its CPU in a drain (BENCHMARKS.md, "Ending
/// sessions without `pg_stat_activity`"). `pg_terminate_backend` still
/// checks the admin's right to signal each session it ends.
pub(crate) fn end_sessions_sql(names: &str) -> String {
    format!(
        "SELECT pg_terminate_backend(pg_stat_get_backend_pid(s.id)) FROM pg_stat_get_backend_idset() AS s(id) \
         WHERE pg_stat_get_backend_userid(s.id) IN (SELECT oid FROM pg_roles WHERE rolname = ANY({names}))"
    )
}

/// [`end_sessions_sql`] for roles named in the statement itself, each
/// quoted as a string literal (for messages of several statements, which
/// take no parameters).
pub(crate) fn end_sessions_of<S: AsRef<str>>(names: &[S]) -> String {
    let literals =
        names.iter().map(|n| format!("'{}'", n.as_ref().replace('\'', "''"))).collect::<Vec<_>>().join(", ");
    end_sessions_sql(&format!("ARRAY[{literals}]::name[]"))
}

impl PgPlugin {
    pub(crate) async fn revoke_default(
        &self,
        client: &Object,
        username: &str,
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let redactor = Redactor::default();
        let ident = quote_ident(username);
        if self.revoke_pipelined(client, username, &ident).await {
            return Ok(());
        }

        // The step-by-step path: after the pipelined one met something other
        // than success or "already gone", find out which step and why.
        // 1. No new logins, committed before anything else can fail.
        match client.batch_execute(&format!("ALTER ROLE {ident} NOLOGIN")).await {
            Err(e) if is_undefined_object(&e) => {
                debug!(operation = "revoke", connection = %self.connection, username, "role already gone");
                return Ok(());
            }
            other => other.map_err(|e| classify(&e, &cx.step("ALTER ROLE NOLOGIN", false), &redactor))?,
        }

        // 2. End live sessions: NOLOGIN does not, and DROP ROLE leaves them
        // running under a dangling identity.
        let terminate = end_sessions_sql("ARRAY[$1]::name[]");
        let steps: [(&str, Step<'_>); 4] = [
            ("terminate sessions", Step::Query(&terminate)),
            ("REASSIGN OWNED", Step::Batch(format!("REASSIGN OWNED BY {ident} TO CURRENT_USER"))),
            ("DROP OWNED", Step::Batch(format!("DROP OWNED BY {ident}"))),
            ("DROP ROLE", Step::Batch(format!("DROP ROLE IF EXISTS {ident}"))),
        ];
        let mut granted = false;
        for (name, step) in &steps {
            let mut result = step.run(client, username).await;
            // PostgreSQL 15: CREATEROLE does not make the admin a member of
            // the roles it created, and signalling their sessions or
            // reassigning/dropping what they own needs that membership.
            if !granted && matches!(&result, Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)) {
                granted = true;
                debug!(operation = "revoke", connection = %self.connection, username, step = name, "granting the role to the admin and retrying");
                match client.batch_execute(&format!("GRANT {ident} TO CURRENT_USER")).await {
                    Err(e) if is_undefined_object(&e) => return Ok(()),
                    Err(e) => {
                        return Err(classify(&e, &cx.step("GRANT role TO CURRENT_USER", false), &redactor))
                    }
                    Ok(()) => result = step.run(client, username).await,
                }
            }
            match result {
                Ok(()) => {
                    debug!(operation = "revoke", connection = %self.connection, username, step = name, "done")
                }
                // Someone else dropped it between two steps: that is success.
                Err(e) if is_undefined_object(&e) => return Ok(()),
                Err(e) => return Err(classify(&e, &cx.step(*name, false), &redactor)),
            }
        }
        Ok(())
    }

    /// The default recipe in three messages sent at once, so the
    /// revocation costs one round trip instead of six:
    /// 1. `NOLOGIN`, committed on its own, so it sticks whatever follows;
    /// 2. membership of the role (PostgreSQL 15 does not give it to the
    ///    CREATEROLE admin that made it; signalling its sessions and
    ///    REASSIGN/DROP OWNED need it);
    /// 3. terminate the sessions, reassign and drop what the role owns, drop
    ///    the role: one multi-statement query, which PostgreSQL runs as one
    ///    implicit transaction that stops at the first error. So the role is
    ///    dropped only if its sessions could be signalled: a failed
    ///    `pg_terminate_backend` leaves it in place (not logging in), the
    ///    revocation fails and is retried, and the retry still finds the
    ///    sessions by the role's name.
    ///
    /// Returns whether the role is gone and every step either succeeded or
    /// found it already gone; otherwise the caller runs the steps one by one
    /// to find out which failed and why.
    async fn revoke_pipelined(&self, client: &Object, username: &str, ident: &str) -> bool {
        let nologin = format!("ALTER ROLE {ident} NOLOGIN");
        let grant = format!("GRANT {ident} TO CURRENT_USER");
        let end = format!(
            "{}; \
             REASSIGN OWNED BY {ident} TO CURRENT_USER; \
             DROP OWNED BY {ident}; \
             DROP ROLE IF EXISTS {ident}",
            end_sessions_of(&[username])
        );
        let results = pipelined(client, [&nologin, &grant, &end]).await;
        let gone = results.iter().any(|r| matches!(r, Err(e) if is_undefined_object(e)));
        let dropped = results[2].is_ok();
        let clean = results.iter().enumerate().all(|(i, r)| match r {
            Ok(()) => true,
            // A superuser admin needs no membership and may fail to get it.
            Err(e) => is_undefined_object(e) || (i == 1 && dropped),
        });
        if clean && dropped {
            debug!(operation = "revoke", connection = %self.connection, username, already_gone = gone, "revoked (pipelined)");
        }
        clean && dropped
    }

    pub(crate) async fn revoke_custom(
        &self,
        client: &Object,
        username: &str,
        statements: &[Template],
        cx: &Context<'_>,
    ) -> Result<(), PluginError> {
        let redactor = Redactor::default();
        check_username(username, cx)?;
        for (i, template) in statements.iter().enumerate() {
            let step = format!("revocation statement {} of {}", i + 1, statements.len());
            let sql = template.render(&Values { name: username, password: None, expiration: None });
            match client.batch_execute(sql.expose_secret()).await {
                Ok(()) => {}
                // 42704 may be about another object; only a missing role is
                // "already revoked".
                Err(e) if is_undefined_object(&e) => {
                    if !role_exists(client, username).await.map_err(|e| classify(&e, cx, &redactor))? {
                        debug!(operation = "revoke", connection = %self.connection, username, "role already gone");
                        return Ok(());
                    }
                    return Err(classify(&e, &cx.step(step, true), &redactor));
                }
                Err(e) => return Err(classify(&e, &cx.step(step, true), &redactor)),
            }
        }
        Ok(())
    }
}

/// Sends `statements` at once, each a simple query (a multi-statement one
/// runs as one implicit transaction), and returns their results in order:
/// one round trip for all of them.
pub(crate) async fn pipelined(
    client: &Object,
    statements: [&str; 3],
) -> [Result<(), tokio_postgres::Error>; 3] {
    let client: &tokio_postgres::Client = client;
    let [a, b, c] = statements;
    // join3 polls in order, so the messages are sent in order.
    let (a, b, c) = futures_util::future::join3(
        client.batch_execute(a),
        client.batch_execute(b),
        client.batch_execute(c),
    )
    .await;
    [a, b, c]
}

/// One step of the default revocation recipe.
enum Step<'a> {
    /// A statement without parameters (identifiers are quoted in).
    Batch(String),
    /// A query taking the username as `$1`.
    Query(&'a str),
}

impl Step<'_> {
    async fn run(&self, client: &Object, username: &str) -> Result<(), tokio_postgres::Error> {
        match self {
            Self::Batch(sql) => client.batch_execute(sql).await,
            Self::Query(sql) => client.query(*sql, &[&username]).await.map(drop),
        }
    }
}
