//! A lease as the daemon keeps it and the API shows it: one definition.
//! The daemon's lease model is this type (`lessor::lease` re-exports
//! it); its two fields of bookkeeping (`plugin_data`, `idempotency`) never
//! leave the daemon.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A lease id: `<role>/<random>`, so that a prefix selects a role's leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(String);

impl LeaseId {
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

    /// Wraps an id lessor made itself (a fresh one, or one read back from
    /// its store), unchecked.
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

/// Who obtained a lease: the caller's uid, gid and pid, and the policy that
/// granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseOwner {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    #[serde(default)]
    pub policy: Option<String>,
    /// The node whose daemon issued it, when nodes share a store: the
    /// owner is this uid on that node (a socket is local to its host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The systemd unit the credential was delivered to through
    /// `LoadCredential=` (the credentials socket): the lease lives while
    /// the unit's processes run, and is revoked when they are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// One lease (`GET /v1/leases/{id}`, the lease list, watch events). Holds
/// no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(rename = "lease_id")]
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
    pub owner: LeaseOwner,
    /// When the lease reached `revoked`.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Non-secret data the plugin needs to renew or revoke. The daemon's
    /// own: never in an answer.
    #[serde(skip)]
    pub plugin_data: Option<serde_json::Value>,
    /// The digest of the `Idempotency-Key` it was issued for, with who
    /// asked and for which role (never the key itself). The daemon's own:
    /// never in an answer.
    #[serde(skip)]
    pub idempotency: Option<String>,
}

/// A renewal's answer (`PUT /v1/leases/{id}/renew`): the lease, and the
/// seconds it has left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewed {
    #[serde(flatten)]
    pub lease: Lease,
    pub ttl_seconds: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_are_refused() {
        for raw in ["../etc/passwd", "app_ro/../x", "app_ro", "/abc", "app_ro/", "a'b/c", "a/b/c", "a/b%2f"] {
            assert_eq!(LeaseId::parse(raw), None, "{raw}");
        }
        assert_eq!(
            LeaseId::parse("app_ro/abc123").map(|id| id.role().to_string()).as_deref(),
            Some("app_ro")
        );
    }

    /// The daemon's bookkeeping stays home, and a lease reads back as it
    /// was sent otherwise.
    #[test]
    fn a_lease_answer_holds_no_bookkeeping_and_reads_back() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let lease = Lease {
            id: LeaseId::from_store("app_ro/abc".into()),
            role: "app_ro".into(),
            connection: "pg".into(),
            username: "v_app_ro_x".into(),
            state: LeaseState::Revoking,
            issued_at: at,
            expires_at: at,
            max_expires_at: at,
            renewable: true,
            attempts: 2,
            last_error: Some("timeout".into()),
            owner: LeaseOwner { uid: 1000, gid: 1000, pid: Some(7), policy: None, node: None, unit: None },
            revoked_at: None,
            plugin_data: Some(serde_json::json!({"grants": ["SELECT"]})),
            idempotency: Some("digest".into()),
        };
        let json = serde_json::to_value(Renewed { lease: lease.clone(), ttl_seconds: 5 }).unwrap();
        assert_eq!(json["lease_id"], "app_ro/abc");
        assert_eq!(json["state"], "revoking");
        assert_eq!(json["ttl_seconds"], 5);
        assert!(json.get("plugin_data").is_none() && json.get("idempotency").is_none(), "{json}");
        let back: Renewed = serde_json::from_value(json).unwrap();
        assert_eq!(back.lease, Lease { plugin_data: None, idempotency: None, ..lease });
    }
}
