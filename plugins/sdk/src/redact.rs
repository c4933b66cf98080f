//! Scrubbing secrets out of error messages.
//!
//! A backend's error may quote the statement it choked on ("near …", "at or
//! near …", a failed cast of a literal), and that statement may hold the
//! password we rendered into it. Every SQL plugin therefore passes its
//! messages through a [`Redactor`] before they become a
//! [`PluginError`](crate::PluginError); it lives here so that every backend
//! scrubs the same way and prints the same [`REDACTED`] marker.

use secrecy::{ExposeSecret, SecretString};

/// What replaces a secret in a message.
pub const REDACTED: &str = "[redacted]";

/// The values that must never appear in a message: the password and what
/// was sent in its place (and the admin's). Held as [`SecretString`]s so our
/// copies are zeroized too.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<SecretString>,
}

impl Redactor {
    /// A redactor for `secrets`; empty strings are ignored.
    pub fn new<'s>(secrets: impl IntoIterator<Item = &'s str>) -> Self {
        let mut all: Vec<&str> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret that contains another is replaced whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Self { secrets: all.into_iter().map(SecretString::from).collect() }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if out.contains(secret) {
                out = out.replace(secret, REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_longest_first_and_hides_secrets_from_debug() {
        let redactor = Redactor::new(["abc", "abcdef", "", "abc"]);
        assert_eq!(redactor.scrub("x abcdef y abc"), format!("x {REDACTED} y {REDACTED}"));
        assert_eq!(redactor.scrub("nothing secret"), "nothing secret");
        assert_eq!(Redactor::new([""]).scrub("keep"), "keep");
        assert!(!format!("{redactor:?}").contains("abcdef"));
    }
}
