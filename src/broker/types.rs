//! What the broker's operations take and give back: the caller (defined
//! with the permission checks in `policy`), the outcome of an issuance or a
//! revocation, and the errors, each mapped to one HTTP status.

use lessor_plugin::{Credential, Fault, PluginError};

use crate::policy::quota::OverQuota;
pub use crate::policy::Caller;
use crate::policy::Denied;

use crate::lease::{Lease, LeaseId};
use crate::store::StoreError;

/// Why a broker operation failed. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No role of that name is configured (404).
    #[error("unknown role {role:?}")]
    UnknownRole { role: String },
    /// No lease with that id is known, or none the caller may touch (404:
    /// the same answer, so a stranger cannot probe which ids exist).
    #[error("unknown lease {id:?}")]
    UnknownLease { id: String },
    /// The request is malformed or asks for too much (400).
    #[error("{message}")]
    BadRequest { message: String },
    /// No policy grants the caller this (403).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The issuance would exceed a `max_leases` (429).
    #[error(transparent)]
    OverQuota(#[from] OverQuota),
    /// The lease is not in a state that allows the operation (409).
    #[error("lease {id} is {state}: {message}")]
    Conflict { id: LeaseId, state: &'static str, message: String },
    /// The backend failed (502) or the role is wrong for it.
    #[error("{context}: {source}")]
    Backend { context: String, source: PluginError },
    /// The lease store failed (503): nothing was done.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug in lessor itself (500).
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl BrokerError {
    /// The HTTP status and the machine-readable code for this error.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::UnknownRole { .. } => (404, "unknown_role"),
            Self::UnknownLease { .. } => (404, "unknown_lease"),
            Self::BadRequest { .. } => (400, "bad_request"),
            Self::Denied(_) => (403, "forbidden"),
            Self::OverQuota(_) => (429, "quota_exceeded"),
            Self::Conflict { .. } => (409, "conflict"),
            Self::Backend { source, .. } => match source.fault() {
                Fault::Caller => (400, "invalid_role"),
                Fault::Backend => (502, "backend_failed"),
                Fault::Internal => (500, "internal"),
                Fault::Plugin => (503, "plugin_unavailable"),
            },
            // Nothing was created: the lease could not be recorded first.
            Self::Store(_) => (503, "store_unavailable"),
            Self::Internal { .. } => (500, "internal"),
        }
    }
}

/// What a successful issuance returns to the caller, once.
#[derive(Debug, Clone)]
pub struct Issued {
    pub lease: Lease,
    pub plugin: &'static str,
    pub credential: Credential,
    /// A `share = "workload"` lease, held by every caller of the workload.
    pub shared: bool,
}

/// The outcome of a revocation that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The credential was removed now.
    Revoked,
    /// It had been revoked before.
    AlreadyRevoked,
    /// `force`: the backend refused, the lease was dropped anyway.
    Forced,
    /// An expiry found the lease renewed in the meantime; nothing was done.
    NotDue,
    /// Another node (of a shared store) works on the lease now; this one
    /// looks again when that node's claim ends.
    Busy { node: String },
    /// A holder of a shared lease (`share = "workload"`) let go of it; it
    /// is revoked once every holder has, and `share_grace` has passed.
    Released { holders: usize },
}
