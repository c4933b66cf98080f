//! From MySQL's and MariaDB's failures to the broker's [`PluginError`]
//! classes.
//!
//! The broker decides between "retry now", "retry later", "tell the caller"
//! and "page someone" from the class alone, so the mapping lives in one
//! place and is tested as a table. Messages are built from the server's
//! error code and message only (never the statement we sent) and are then
//! scrubbed of the password: a syntax error quotes the text "near" where
//! parsing stopped, which may be the very `IDENTIFIED BY '…'` we rendered.

use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::PluginError;

/// Server error codes the plugin acts on (MySQL's `ER_*`; MariaDB shares
/// them).
pub(crate) mod code {
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// `ER_SERVER_SHUTDOWN`.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// `ER_PARSE_ERROR`: a syntax error.
    pub const PARSE_ERROR: u16 = 1064;
    /// `ER_NO_SUCH_THREAD`: `KILL` of a connection that has ended.
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// `ER_NONEXISTING_GRANT`: `REVOKE` of a grant that is gone.
    pub const NONEXISTING_GRANT: u16 = 1141;
    /// `ER_TABLEACCESS_DENIED_ERROR`: e.g. no `SELECT` on `mysql.user`.
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    /// `ER_NONEXISTING_TABLE_GRANT`: `REVOKE` on a table grant that is gone.
    pub const NONEXISTING_TABLE_GRANT: u16 = 1147;
    /// `ER_SYNTAX_ERROR`.
    pub const SYNTAX_ERROR: u16 = 1149;
    /// `ER_TOO_MANY_USER_CONNECTIONS`.
    pub const TOO_MANY_USER_CONNECTIONS: u16 = 1203;
    /// `ER_LOCK_WAIT_TIMEOUT`.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_LOCK_DEADLOCK`.
    pub const DEADLOCK: u16 = 1213;
    /// `ER_QUERY_INTERRUPTED`.
    pub const QUERY_INTERRUPTED: u16 = 1317;
    /// `ER_CANNOT_USER`: "Operation CREATE/ALTER/DROP USER failed for …",
    /// which for ALTER and DROP means the user does not exist.
    pub const CANNOT_USER: u16 = 1396;
    /// `ER_NONEXISTING_PROC_GRANT`: `REVOKE` on a routine grant that is gone.
    pub const NONEXISTING_PROC_GRANT: u16 = 1403;
    /// MariaDB's `ER_CONNECTION_KILLED`.
    pub const CONNECTION_KILLED: u16 = 1927;
    /// MySQL's `ER_SESSION_WAS_KILLED`.
    pub const SESSION_WAS_KILLED: u16 = 3169;
    /// MySQL's `ER_USER_DOES_NOT_EXIST` (e.g. `SHOW GRANTS` for a missing user).
    pub const USER_DOES_NOT_EXIST: u16 = 3162;
}

/// The server's error code, when the server answered with one.
pub(crate) fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// Classifies a failed statement or connection attempt.
pub(crate) fn classify(err: &mysql_async::Error, cx: &Context<'_>, redactor: &Redactor) -> PluginError {
    match err {
        mysql_async::Error::Server(e) => classify_server(e.code, &e.state, &e.message, cx, redactor),
        // The socket, the protocol, the handshake: another connection, later,
        // can succeed.
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => {
            PluginError::Unavailable { message: redactor.scrub(&format!("{}: {err}", cx.prefix())) }
        }
        mysql_async::Error::Url(_) | mysql_async::Error::Other(_) => {
            PluginError::Internal { message: redactor.scrub(&format!("{}: {err}", cx.prefix())) }
        }
    }
}

/// The classification table, apart from the driver's types so it can be
/// unit-tested without a server.
pub(crate) fn classify_server(
    code: u16,
    state: &str,
    message: &str,
    cx: &Context<'_>,
    redactor: &Redactor,
) -> PluginError {
    let message = redactor.scrub(&format!("{}: error {code} ({state}): {message}", cx.prefix()));
    match code {
        code::DEADLOCK | code::LOCK_WAIT_TIMEOUT => PluginError::Transient { message, retry_after: None },
        code::TOO_MANY_CONNECTIONS
        | code::TOO_MANY_USER_CONNECTIONS
        | code::SERVER_SHUTDOWN
        | code::QUERY_INTERRUPTED
        | code::CONNECTION_KILLED
        | code::SESSION_WAS_KILLED => PluginError::Unavailable { message },
        // SQLSTATE class 08: connection exceptions.
        _ if state.starts_with("08") => PluginError::Unavailable { message },
        code::PARSE_ERROR | code::SYNTAX_ERROR if cx.role_statement => PluginError::InvalidRole { message },
        // Everything else (missing objects or privileges, a wrong admin
        // password, a password policy) will fail the same way next time.
        _ => PluginError::Rejected { message },
    }
}

/// Whether a failed revocation statement means the thing it removes is
/// already gone: an unknown user, a grant that no longer exists.
pub(crate) fn is_already_gone(err: &mysql_async::Error) -> bool {
    matches!(
        server_code(err),
        Some(
            code::CANNOT_USER
                | code::NONEXISTING_GRANT
                | code::NONEXISTING_TABLE_GRANT
                | code::NONEXISTING_PROC_GRANT
                | code::USER_DOES_NOT_EXIST
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin::failure::Operation;
    use lessor_plugin::redact::REDACTED;

    const PW: &str = "Zx9PassWordPlainText000000000000";

    fn classify_code(code: u16, state: &str, role_statement: bool) -> PluginError {
        let cx = Context::new(Operation::Create, Some("v_app_abc"))
            .step("creation statement 1 of 1", role_statement);
        classify_server(code, state, "x", &cx, &Redactor::default())
    }

    #[test]
    fn classification_table() {
        for c in [1213, 1205] {
            let e = classify_code(c, "40001", true);
            assert!(e.is_transient_conflict() && e.is_retryable(), "{c}: {e:?}");
        }
        for (c, s) in [
            (1040, "HY000"),
            (1053, "08S01"),
            (1203, "42000"),
            (1927, "70100"),
            (3169, "HY000"),
            (1999, "08004"),
        ] {
            assert!(matches!(classify_code(c, s, true), PluginError::Unavailable { .. }), "{c}");
        }
        assert!(matches!(classify_code(1064, "42000", true), PluginError::InvalidRole { .. }));
        assert!(matches!(classify_code(1149, "42000", true), PluginError::InvalidRole { .. }));
        assert!(matches!(classify_code(1064, "42000", false), PluginError::Rejected { .. }));
        for c in [1045, 1044, 1142, 1146, 1396, 1819, 1227] {
            let e = classify_code(c, "HY000", true);
            assert!(matches!(e, PluginError::Rejected { .. }), "{c}: {e:?}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn messages_name_the_step_and_code_and_scrub_the_password() {
        let redactor = Redactor::new([PW]);
        let cx = Context::new(Operation::Create, Some("v_app_abc")).step("creation statement 1 of 2", true);
        let e = classify_server(
            1064,
            "42000",
            &format!("You have an error in your SQL syntax; check the manual near '{PW}' at line 1"),
            &cx,
            &redactor,
        );
        let m = e.to_string();
        assert!(m.contains("create v_app_abc (creation statement 1 of 2)"), "{m}");
        assert!(m.contains("error 1064 (42000)"), "{m}");
        assert!(!m.contains(PW), "{m}");
        assert!(m.contains(REDACTED), "{m}");
        assert_eq!(redactor.scrub("nothing secret"), "nothing secret");
        assert_eq!(Redactor::new([""]).scrub("keep"), "keep");
        assert!(!format!("{redactor:?}").contains(PW));
    }
}
