//! LDAP failures as the broker's error classes.
//!
//! A server that cannot be reached, or says it is busy, may answer the
//! next try: retryable. A refusal (wrong credentials, no access, a schema
//! violation) will be repeated: permanent, and the role's fault when the
//! refused record came from its LDIF. Every message says what was done to
//! which DN and what the server said; it never holds a password or a hash
//! (what the server says is scrubbed of them too).

use ldap3::{LdapError, LdapResult};
use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::PluginError;

/// LDAP result codes this plugin reads (RFC 4511, appendix A).
pub mod rc {
    pub const SUCCESS: u32 = 0;
    pub const NO_SUCH_ATTRIBUTE: u32 = 16;
    pub const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS: u32 = 50;
}

/// The name RFC 4511 gives a result code.
pub fn rc_name(code: u32) -> &'static str {
    match code {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        54 => "loopDetect",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        69 => "objectClassModsProhibited",
        80 => "other",
        _ => "unknown result code",
    }
}

/// A server's answer other than success, as an error. `what` is the
/// operation and its DN (`add cn=…`); `bind_dn` who lessor was bound as.
pub fn refused(
    result: &LdapResult,
    what: &str,
    bind_dn: &str,
    cx: &Context<'_>,
    redactor: &Redactor,
) -> PluginError {
    let said = match lessor_plugin::tls::server_text(&result.text) {
        t if t.is_empty() => String::new(),
        t => format!(": {}", redactor.scrub(&t)),
    };
    let mut message = format!("{}: {what}: {} ({}){said}", cx.prefix(), rc_name(result.rc), result.rc);
    match result.rc {
        rc::INVALID_CREDENTIALS => {
            message.push_str(" (a wrong password, or an account locked, expired or disabled)")
        }
        rc::INSUFFICIENT_ACCESS => message.push_str(&format!(
            " ({bind_dn} lacks the access; grant it write access where the role's LDIF writes)"
        )),
        _ => {}
    }
    match result.rc {
        // busy, unavailable, time limit, admin limit: the next try may pass.
        3 | 11 | 51 | 52 => PluginError::Unavailable { message },
        // The role's LDIF asked for something the schema refuses.
        16..=21 | 34 | 64 | 65 | 67 | 69 if cx.role_statement => PluginError::InvalidRole { message },
        _ => PluginError::Rejected { message },
    }
}

/// A failure to talk to the server at all (or a refusal that ldap3 turned
/// into an error). `what` as for [`refused`].
pub fn failed(
    e: &LdapError,
    what: &str,
    bind_dn: &str,
    cx: &Context<'_>,
    redactor: &Redactor,
) -> PluginError {
    if let LdapError::LdapResult { result } = e {
        return refused(result, what, bind_dn, cx, redactor);
    }
    if let Some(why) = lessor_plugin::tls::explain(e) {
        // A certificate the CA did not sign stays unsigned: retrying won't help.
        return PluginError::Rejected { message: format!("{}: {what}: TLS: {why}", cx.prefix()) };
    }
    let message = format!("{}: {what}: {}", cx.prefix(), redactor.scrub(&e.to_string()));
    match e {
        LdapError::Io { .. }
        | LdapError::Timeout { .. }
        | LdapError::OpSend { .. }
        | LdapError::ResultRecv { .. }
        | LdapError::IdScrubSend { .. }
        | LdapError::MiscSend { .. }
        | LdapError::EndOfStream => PluginError::Unavailable { message },
        _ => PluginError::Rejected { message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin::failure::Operation;

    fn result(code: u32, text: &str) -> LdapResult {
        LdapResult { rc: code, matched: String::new(), text: text.into(), refs: vec![], ctrls: vec![] }
    }

    #[test]
    fn classes_and_messages() {
        let cx = Context::new(Operation::Create, Some("v_x"));
        let redactor = Redactor::new(["s3cret"]);
        let e = refused(&result(49, ""), "bind cn=lessor,dc=x", "cn=lessor,dc=x", &cx, &redactor);
        assert!(matches!(e, PluginError::Rejected { .. }));
        assert!(e.to_string().contains("create v_x: bind cn=lessor,dc=x: invalidCredentials (49)"), "{e}");
        let e =
            refused(&result(50, "no write access to parent"), "add cn=v_x,ou=p", "cn=lessor", &cx, &redactor);
        assert!(
            e.to_string().contains("cn=lessor lacks the access") && e.to_string().contains("no write access"),
            "{e}"
        );
        assert!(refused(&result(51, ""), "add x", "b", &cx, &redactor).is_retryable());
        let schema =
            refused(&result(65, ""), "add x", "b", &cx.step("creation_ldif record 1 of 1", true), &redactor);
        assert!(matches!(schema, PluginError::InvalidRole { .. }), "{schema}");
        assert!(matches!(
            refused(&result(65, ""), "add x", "b", &cx, &redactor),
            PluginError::Rejected { .. }
        ));
        let e = refused(&result(19, "password s3cret is in history"), "modify x", "b", &cx, &redactor);
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let io = failed(
            &LdapError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            "connect ldap://127.0.0.1:1",
            "b",
            &cx,
            &redactor,
        );
        assert!(io.is_retryable(), "{io}");
    }
}
