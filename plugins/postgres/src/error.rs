//! From PostgreSQL's failures to the broker's [`PluginError`] classes.
//!
//! The broker decides between "retry now", "retry later", "tell the caller"
//! and "page someone" from the class alone, so the mapping lives in one
//! place and is tested as a table. Messages are built only from the
//! server's message, detail and hint (never its `where`/`internal_query`
//! fields, never the statement we sent) and are then scrubbed of the
//! password and its verifier: a syntax error "at or near" a token, or a
//! failed cast of a literal, quotes the very text we rendered.

use deadpool_postgres::{PoolError, TimeoutType};
use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::PluginError;
use tokio_postgres::error::SqlState;

/// The secrets to redact, with a SCRAM verifier's parts (salt, keys) added
/// one by one, in case a message quotes only a fragment.
pub(crate) fn with_verifier_parts<'s>(secrets: impl IntoIterator<Item = &'s str>) -> Vec<&'s str> {
    let mut all: Vec<&str> = Vec::new();
    for secret in secrets {
        if secret.is_empty() {
            continue;
        }
        all.push(secret);
        if let Some(rest) = secret.strip_prefix("SCRAM-SHA-256$") {
            all.extend(rest.split(['$', ':']).filter(|part| part.len() >= 8));
        }
    }
    all
}

/// Classifies a failed statement or connection.
pub(crate) fn classify(err: &tokio_postgres::Error, cx: &Context<'_>, redactor: &Redactor) -> PluginError {
    match err.as_db_error() {
        Some(db) => classify_db(db.code(), db.message(), db.detail(), db.hint(), cx, redactor),
        // No SQLSTATE: the socket, the protocol or the connection attempt
        // failed. Retrying later, maybe on another connection, can help.
        None => PluginError::Unavailable { message: redactor.scrub(&format!("{}: {err}", cx.prefix())) },
    }
}

/// Classifies a failure to get an admin connection from the pool.
pub(crate) fn classify_pool(err: &PoolError, cx: &Context<'_>, redactor: &Redactor) -> PluginError {
    let unavailable = |what: &str| PluginError::Unavailable { message: format!("{}: {what}", cx.prefix()) };
    match err {
        PoolError::Backend(e) => classify(e, cx, redactor),
        PoolError::Timeout(TimeoutType::Wait) => {
            unavailable("timed out waiting for a free admin connection (raise max_connections?)")
        }
        PoolError::Timeout(TimeoutType::Create) => unavailable("timed out connecting to the server"),
        PoolError::Timeout(TimeoutType::Recycle) => unavailable("timed out checking a pooled connection"),
        PoolError::Closed => unavailable("the admin connection pool is closed"),
        other => PluginError::Internal { message: redactor.scrub(&format!("{}: {other}", cx.prefix())) },
    }
}

/// The classification table, apart from tokio-postgres's types so it can be
/// unit-tested without a server.
pub(crate) fn classify_db(
    code: &SqlState,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
    cx: &Context<'_>,
    redactor: &Redactor,
) -> PluginError {
    let mut text = format!("{}: SQLSTATE {}: {message}", cx.prefix(), code.code());
    if let Some(d) = detail {
        text.push_str(&format!(" ({d})"));
    }
    if let Some(h) = hint {
        text.push_str(&format!("; hint: {h}"));
    }
    let message = redactor.scrub(&text);

    let class = &code.code()[..2];
    if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || (*code == SqlState::INTERNAL_ERROR && is_concurrent_update(&text))
    {
        return PluginError::Transient { message, retry_after: None };
    }
    if class == "08"
        || class == "53"
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::QUERY_CANCELED
    {
        return PluginError::Unavailable { message };
    }
    if cx.role_statement && *code == SqlState::SYNTAX_ERROR {
        return PluginError::InvalidRole { message };
    }
    // Everything else (undefined objects, missing privileges, a wrong admin
    // password, constraint violations) will fail the same way next time.
    PluginError::Rejected { message }
}

/// Concurrent `GRANT`s on one table update the same catalog row; the loser
/// gets XX000 "tuple concurrently updated", which a retry fixes.
fn is_concurrent_update(message: &str) -> bool {
    message.contains("tuple concurrently updated") || message.contains("tuple concurrently deleted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin::failure::Operation;
    use lessor_plugin::redact::REDACTED;

    const PW: &str = "Zx9PassWordPlainText000000000000";

    fn verifier() -> String {
        postgres_protocol::password::scram_sha_256(PW.as_bytes())
    }

    fn classify_code(code: &str, message: &str, role_statement: bool) -> PluginError {
        let cx = Context::new(Operation::Create, Some("v_app_abc"))
            .step("creation statement 1 of 1", role_statement);
        classify_db(&SqlState::from_code(code), message, None, None, &cx, &Redactor::default())
    }

    #[test]
    fn classification_table() {
        let transient = |c: &str, m: &str| matches!(classify_code(c, m, true), PluginError::Transient { .. });
        assert!(transient("40001", "could not serialize access"));
        assert!(transient("40P01", "deadlock detected"));
        assert!(transient("55P03", "could not obtain lock"));
        assert!(transient("XX000", "tuple concurrently updated"));
        assert!(!transient("XX000", "cache lookup failed for relation 1"));

        let unavailable = |c: &str| matches!(classify_code(c, "x", true), PluginError::Unavailable { .. });
        for c in ["53300", "57P01", "57P02", "57P03", "08006", "53100"] {
            assert!(unavailable(c), "{c}");
        }

        assert!(matches!(classify_code("42601", "syntax error", true), PluginError::InvalidRole { .. }));
        assert!(matches!(classify_code("42601", "syntax error", false), PluginError::Rejected { .. }));
        for c in ["42704", "42501", "42P01", "28P01", "2BP01"] {
            assert!(matches!(classify_code(c, "x", true), PluginError::Rejected { .. }), "{c}");
        }
        assert!(classify_code("XX000", "tuple concurrently updated", true).is_retryable());
        assert!(!classify_code("42501", "permission denied", true).is_retryable());
    }

    #[test]
    fn messages_name_the_step_and_sqlstate() {
        let e = classify_code("42P01", "relation \"missing\" does not exist", true);
        let m = e.to_string();
        assert!(m.contains("create v_app_abc (creation statement 1 of 1)"), "{m}");
        assert!(m.contains("SQLSTATE 42P01"), "{m}");
    }

    #[test]
    fn scrubs_password_and_verifier_everywhere() {
        let v = verifier();
        let redactor = Redactor::new(with_verifier_parts([PW, v.as_str()]));
        let cx = Context::new(Operation::Create, Some("v_app_abc")).step("creation statement 1 of 2", true);
        let e = classify_db(
            &SqlState::INVALID_TEXT_REPRESENTATION,
            &format!("invalid input syntax for type integer: \"{PW}\""),
            Some(&format!("near {v} and again {PW}")),
            Some(&format!("fragment {}", v.rsplit(':').next().unwrap())),
            &cx,
            &redactor,
        );
        let m = e.to_string();
        assert!(!m.contains(PW), "{m}");
        assert!(!m.contains(&v), "{m}");
        assert!(!m.contains(v.rsplit(':').next().unwrap()), "{m}");
        let salt = v.split('$').nth(1).unwrap().split(':').nth(1).unwrap();
        assert!(!m.contains(salt), "{m}");
        assert!(m.contains(REDACTED), "{m}");
        assert!(m.contains("invalid input syntax"), "{m}");

        assert_eq!(redactor.scrub("nothing secret"), "nothing secret");
        assert_eq!(Redactor::new([""]).scrub("keep"), "keep");
        assert!(!format!("{redactor:?}").contains(PW));
    }

    #[test]
    fn concurrent_update_detection_uses_the_message() {
        assert!(is_concurrent_update("tuple concurrently updated"));
        assert!(!is_concurrent_update("tuple updated"));
    }
}
