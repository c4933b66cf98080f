//! Where a backend failure happened, for the message a plugin builds from it.
//!
//! The SQL plugins name a failure the same way, "create v_app_abc
//! (creation statement 2 of 3): …", and refuse a username that could break
//! a statement template's quoting with the same message; both live here so
//! the backends read alike. Which backend error means what stays in each
//! plugin.

use crate::PluginError;

/// What the plugin was doing when the backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Verify,
    Create,
    Renew,
    Revoke,
    ListUsers,
    /// Setting a static account's password.
    SetPassword,
    /// Giving a static account a second password (`dual_password`).
    AddPassword,
    /// Taking one password away from a static account.
    RemovePassword,
    /// Logging in as a static account to test its new password.
    TestLogin,
    /// Ending a static account's sessions.
    EndSessions,
}

impl Operation {
    /// The operation as it reads in a message.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Create => "create",
            Self::Renew => "renew",
            Self::Revoke => "revoke",
            Self::ListUsers => "list users",
            Self::SetPassword => "set password of",
            Self::AddPassword => "add a password to",
            Self::RemovePassword => "remove a password of",
            Self::TestLogin => "log in as",
            Self::EndSessions => "end sessions of",
        }
    }
}

/// Where a failure happened, for the message: the operation, the username
/// and which step (never the step's statement text).
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub operation: Operation,
    pub username: Option<&'a str>,
    /// "creation statement 2 of 3", "DROP USER", …
    pub step: Option<String>,
    /// Whether the failing statement came from the role's config, so that a
    /// syntax error there is the role's fault, not the backend's.
    pub role_statement: bool,
}

impl<'a> Context<'a> {
    pub fn new(operation: Operation, username: Option<&'a str>) -> Self {
        Self { operation, username, step: None, role_statement: false }
    }

    /// The same context at one step of the operation.
    pub fn step(&self, step: impl Into<String>, role_statement: bool) -> Self {
        Self { step: Some(step.into()), role_statement, ..self.clone() }
    }

    /// `operation username (step)`, the start of every message.
    pub fn prefix(&self) -> String {
        let mut out = self.operation.as_str().to_string();
        if let Some(u) = self.username {
            out.push_str(&format!(" {u}"));
        }
        if let Some(s) = &self.step {
            out.push_str(&format!(" ({s})"));
        }
        out
    }
}

/// Templates paste the username raw between the operator's own quotes, so
/// a name that could close them is refused before anything is rendered.
///
/// A usable name is non-empty, at most `max_len` bytes, and made of ASCII
/// letters, digits, `_` and the backend's `also_allowed` bytes.
pub fn check_username(
    username: &str,
    max_len: usize,
    also_allowed: &[u8],
    cx: &Context<'_>,
) -> Result<(), PluginError> {
    let ok = !username.is_empty()
        && username.len() <= max_len
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || also_allowed.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PluginError::Internal {
            message: format!(
                "{}: username {username:?} is not usable in a statement template (use a-z, 0-9 and _, at most {max_len} bytes)",
                cx.operation.as_str()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_names_operation_user_and_step() {
        let cx = Context::new(Operation::ListUsers, None);
        assert_eq!(cx.prefix(), "list users");
        let cx = Context::new(Operation::Create, Some("v_a")).step("DROP USER", false);
        assert_eq!(cx.prefix(), "create v_a (DROP USER)");
    }

    #[test]
    fn usernames_outside_the_alphabet_or_limit_are_refused() {
        let cx = Context::new(Operation::Create, None);
        assert!(check_username("v_app_1", 8, &[], &cx).is_ok());
        assert!(check_username("v-a.b", 8, b"-.", &cx).is_ok());
        for bad in ["", "v-a", "a'b", "123456789"] {
            let e = check_username(bad, 8, &[], &cx).unwrap_err();
            assert!(e.to_string().contains("at most 8 bytes"), "{e}");
        }
    }
}
