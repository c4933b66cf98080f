//! The typed calls: each answers the API type of [`crate::types`], or an
//! [`Error`] saying what went wrong and whether trying again may help.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::socket::{ApiError, Client, ClientError, Response};
use crate::types::{Issued, Lease, Renewed, StaticInfo};

/// Why a typed call did not give its answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The daemon answered with an error (`{"error":{code,message}}`).
    #[error("lessor refused (HTTP {status}, {}): {}", .error.code, .error.message)]
    Refused { status: u16, error: ApiError },
    /// No answer: the daemon is not running, restarting, or unreachable.
    #[error(transparent)]
    Unreachable(ClientError),
    /// An answer that is not the documented type.
    #[error("lessor answered HTTP {status} with an unexpected body: {message}")]
    Unexpected { status: u16, message: String },
}

impl Error {
    /// Whether trying again later may succeed: the daemon could not be
    /// reached, or answered 429, 502 or 503 (a quota, the backend, not ready).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Refused { status, .. } => matches!(status, 429 | 500 | 502 | 503),
            Self::Unexpected { .. } => false,
        }
    }

    /// The daemon's error code (`unknown_role`, `forbidden`, …), if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { error, .. } => Some(&error.code),
            _ => None,
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Decode { status, source } => {
                Self::Unexpected { status, message: source.to_string() }
            }
            ClientError::Protocol(message) => Self::Unexpected { status: 200, message },
            other => Self::Unreachable(other),
        }
    }
}

/// A 2xx answer's body as `T`, or the error the answer says.
fn typed<T: DeserializeOwned>(response: Response) -> Result<T, Error> {
    if !response.is_success() {
        return Err(match response.api_error() {
            Some(error) => Error::Refused { status: response.status, error },
            None => Error::Unexpected { status: response.status, message: "no error envelope".into() },
        });
    }
    serde_json::from_value(response.body)
        .map_err(|e| Error::Unexpected { status: response.status, message: e.to_string() })
}

impl Client {
    /// A client for `LESSOR_SOCKET`, or [`crate::DEFAULT_SOCKET`].
    pub fn from_env() -> Self {
        let socket = std::env::var_os("LESSOR_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_SOCKET));
        Self::new(socket)
    }

    /// Issues a credential of `role`, with a TTL such as `"15m"` or the
    /// role's default.
    pub async fn issue(&self, role: &str, ttl: Option<&str>) -> Result<Issued, Error> {
        typed(self.creds(role, ttl).await?)
    }

    /// Extends a lease by `increment` (or the role's default TTL), capped
    /// at its max_ttl; the answer has the new expiry and `ttl_seconds`.
    pub async fn renew_lease(&self, lease_id: &str, increment: Option<&str>) -> Result<Renewed, Error> {
        typed(self.renew(lease_id, increment).await?)
    }

    /// One lease's metadata.
    pub async fn lease(&self, lease_id: &str) -> Result<Lease, Error> {
        typed(self.lease_get(lease_id).await?)
    }

    /// Revokes a lease now. A lease revoked already is success.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<(), Error> {
        typed::<Value>(self.revoke(lease_id).await?).map(drop)
    }

    /// A static account's current credential and where its rotation stands.
    pub async fn static_account(&self, name: &str) -> Result<StaticInfo, Error> {
        typed(self.static_get(name).await?)
    }
}
