//! The lease model: what lessor remembers about every credential it made.
//!
//! A lease never holds a secret. It holds what is needed to find and remove
//! the credential again (connection, role, username, plugin data) and where
//! it stands in its life:
//!
//! ```text
//! pending ──▶ active ──▶ revoking ──▶ revoked
//!    │                      │  ▲
//!    └──────▶ revoking      ▼  │ (slow retry)
//!                        irrevocable
//! ```
//! `pending` is written before the backend is touched, so a crash at any
//! instant leaves a record of every username that may exist.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lease id: `<role>/<random>`, so that a prefix selects a role's leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(String);

/// The length of a generated id's random part.
pub const ID_RANDOM_LEN: usize = 22;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl LeaseId {
    /// A fresh id for `role` with [`ID_RANDOM_LEN`] (22) random characters
    /// (about 131 bits).
    pub fn generate(role: &str) -> Self {
        let mut id = String::with_capacity(role.len() + 1 + ID_RANDOM_LEN);
        id.push_str(role);
        id.push('/');
        lessor_plugin::names::push_random(&mut id, ID_ALPHABET, ID_RANDOM_LEN);
        Self(id)
    }

    /// Accepts an id from a request: `role/random` with a role name made of
    /// `[A-Za-z0-9_-]` and a random part of `[A-Za-z0-9]`. Anything else
    /// (`..`, more slashes, quotes) is refused before it reaches the store.
    pub fn parse(raw: &str) -> Option<Self> {
        let (role, random) = raw.split_once('/')?;
        let role_ok = !role.is_empty()
            && role.len() <= 128
            && role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let random_ok =
            !random.is_empty() && random.len() <= 64 && random.bytes().all(|b| b.is_ascii_alphanumeric());
        (role_ok && random_ok).then(|| Self(raw.to_string()))
    }

    /// Wraps an id read back from the store.
    pub fn from_store(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The role part of the id.
    pub fn role(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(role, _)| role)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Recorded before the backend is touched; the credential may or may not exist.
    Pending,
    /// The credential exists and is in use.
    Active,
    /// Due for removal; workers are trying.
    Revoking,
    /// Removed from the backend (a final state).
    Revoked,
    /// Removal failed many times; still retried at a slow cadence.
    Irrevocable,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Irrevocable => "irrevocable",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "revoking" => Self::Revoking,
            "revoked" => Self::Revoked,
            "irrevocable" => Self::Irrevocable,
            _ => return None,
        })
    }

    /// Whether the lease still needs work from lessor.
    pub fn is_final(self) -> bool {
        self == Self::Revoked
    }
}

/// Who obtained a lease: the kernel's credentials (`SO_PEERCRED`) and the
/// policy that granted it (none for an admin without one, or `--dev`). One
/// definition with the API's, which shows it as the lease's `owner`.
pub use lessor_client::types::LeaseOwner as Owner;

/// One lease. Holds no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub role: String,
    pub connection: String,
    pub username: String,
    pub state: LeaseState,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The latest `expires_at` renewals may reach (issued_at + max_ttl).
    pub max_expires_at: DateTime<Utc>,
    pub renewable: bool,
    /// Failed revocation attempts so far.
    pub attempts: u32,
    /// The last revocation error, scrubbed of secrets.
    pub last_error: Option<String>,
    pub owner: Owner,
    /// Non-secret data the plugin needs to renew or revoke.
    pub plugin_data: Option<serde_json::Value>,
    /// When the lease reached `revoked`.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The digest of the `Idempotency-Key` it was issued for, with who
    /// asked and for which role (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_role_and_parse_back() {
        let id = LeaseId::generate("app_ro");
        assert_eq!(id.role(), "app_ro");
        assert_eq!(LeaseId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(id, LeaseId::generate("app_ro"));
    }

    #[test]
    fn hostile_ids_are_refused() {
        for raw in ["../etc/passwd", "app_ro/../x", "app_ro", "/abc", "app_ro/", "a'b/c", "a/b/c", "a/b%2f"] {
            assert_eq!(LeaseId::parse(raw), None, "{raw}");
        }
    }
}
