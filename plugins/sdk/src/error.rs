//! Errors as data: a plugin says what went wrong and whether trying again
//! can help; the broker maps that to a retry, a 4xx or a 502.

use std::time::Duration;

/// Who caused a failure; decides the HTTP status the broker answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The backend failed or refused (502).
    Backend,
    /// The request or the role's config is wrong (400).
    Caller,
    /// lessor itself is wrong (500).
    Internal,
    /// An external plugin is not running; it is being restarted (503).
    Plugin,
}

/// A failure while talking to a backend. Messages never contain secrets:
/// plugins scrub passwords and verifiers before building one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The backend could not be reached (refused, timed out, pool exhausted).
    #[error("backend unreachable: {message}")]
    Unavailable { message: String },
    /// A transient conflict inside the backend (concurrent update, deadlock,
    /// serialization failure); the whole operation may be retried.
    #[error("transient backend conflict: {message}")]
    Transient {
        message: String,
        /// A hint for how long to wait, when the backend gives one.
        retry_after: Option<Duration>,
    },
    /// The backend refused the operation and will refuse it again.
    #[error("backend refused: {message}")]
    Rejected { message: String },
    /// The role's statements or settings are wrong for this backend.
    #[error("invalid role definition: {message}")]
    InvalidRole { message: String },
    /// The plugin cannot do this at all.
    #[error("operation not supported by this plugin: {operation}")]
    Unsupported { operation: &'static str },
    /// A bug: the broker and the plugin disagree.
    #[error("internal plugin error: {message}")]
    Internal { message: String },
    /// An external plugin's process could not answer: it exited, hung or
    /// has not finished starting (and is being restarted), or the call
    /// broke off at the transport. The same call may succeed once it is
    /// back; a create is rolled back like one whose outcome is unknown.
    #[error("plugin {plugin:?} is unavailable: {message}")]
    Down { plugin: String, message: String },
}

impl PluginError {
    /// Whether repeating the same operation can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Transient { .. } | Self::Down { .. })
    }

    /// Whether the failure is a transient conflict that the broker should
    /// retry at once, inside the same request.
    pub fn is_transient_conflict(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Unavailable { .. } | Self::Transient { .. } | Self::Rejected { .. } => Fault::Backend,
            Self::InvalidRole { .. } => Fault::Caller,
            Self::Unsupported { .. } | Self::Internal { .. } => Fault::Internal,
            Self::Down { .. } => Fault::Plugin,
        }
    }
}

/// A problem in a connection's or role's settings, found at config load.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The dotted key the problem is at, e.g. `roles.app_ro.creation_statements`.
    pub key: String,
    /// Why it is wrong.
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}
