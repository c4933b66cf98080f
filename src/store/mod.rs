//! Durable lease storage behind one trait, so the embedded SQLite store and
//! a shared PostgreSQL store (for several nodes) are interchangeable.
//!
//! Every write is durable (fsynced) before its future resolves: the API
//! answers only after the lease it describes would survive a crash.
//! Writes are few and small, so stores batch concurrent ones into one
//! transaction (group commit): one fsync serves many requests.

pub mod cluster;
mod jobs;
pub mod postgres;
pub mod sqlite;
mod statics;

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::lease::{Lease, LeaseId, LeaseState};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use statics::{PendingRotation, RotationPhase, SealedCredential, StaticClaim, StaticRecord};

/// A part of a listing in id order: the ids after `after` (exclusive), at
/// most `limit` of them, so a million leases are never one answer.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl Page<'_> {
    /// Everything, for the daemon's own sweeps.
    pub const ALL: Page<'static> = Page { after: None, limit: usize::MAX };
}

/// What the expiry window needs of a lease to schedule it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub id: LeaseId,
    pub state: LeaseState,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Failed revocation attempts so far.
    pub attempts: u32,
    /// When it was last renewed, if ever.
    pub renewed_at: Option<DateTime<Utc>>,
    /// The node that issued it, in a store several nodes share; `None`
    /// in a store of one node.
    pub node: Option<String>,
}

/// What claiming a lease found (see [`LeaseStore::claim`]).
// Granted is the common answer: boxing the lease would allocate on every
// revocation to make the rare answers smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Claim {
    /// The lease, now claimed by this node (a store of one node does not
    /// record claims: the daemon's own per-lease lock is enough).
    Granted(Lease),
    /// Another node works on the lease (`by`), until `until` at most.
    Held { by: String, until: DateTime<Utc> },
    /// There is no such lease.
    Missing,
}

/// When a lease's expiring warning falls, as the stores compute and index
/// it: [`crate::expiry::warning_at`] of its term (from its last renewal,
/// or its issue) in whole milliseconds, rounded down.
pub(crate) const WARNING_AT_SQL: &str =
    "coalesce(renewed_at, issued_at) + (expires_at - coalesce(renewed_at, issued_at)) * 2 / 3";

/// A span of time the expiry window reads leases for: instants after
/// `after` and up to `until`, in epoch milliseconds (`i64::MIN` for "from
/// the beginning").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub after: i64,
    pub until: i64,
}

/// Where a page of [`LeaseStore::expiring`] or [`LeaseStore::warned`]
/// goes on: after the lease `id` at `at` (epoch milliseconds), in the
/// order `(at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at: i64,
    pub id: String,
}

/// One page of a read by [`Span`], with where the next starts (`None`
/// after the last).
pub type SpanPage = (Vec<Unfinished>, Option<Cursor>);

/// A change to one lease. Each names the states it applies in; a write whose
/// lease is not in one of them changes nothing and reports `false`.
// Inserts are the common write: boxing the lease would cost an allocation
// on the hot path to make the rare small writes smaller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Write {
    /// Records a new lease (normally `pending`). Fails if the id exists.
    Insert(Lease),
    /// `pending` → `active`, storing the plugin's non-secret data and, when
    /// the backend set its own, the credential's real expiry.
    Activate { id: LeaseId, plugin_data: Option<serde_json::Value>, expires_at: Option<DateTime<Utc>> },
    /// Moves `expires_at` of an `active` lease, renewed at `renewed_at`
    /// (whole milliseconds: the start of the term its expiring warning is
    /// two thirds into).
    Renew { id: LeaseId, expires_at: DateTime<Utc>, renewed_at: DateTime<Utc> },
    /// `pending` | `active` | `irrevocable` → `revoking`.
    StartRevoking { id: LeaseId },
    /// Records a failed revocation attempt of a `revoking` or `irrevocable`
    /// lease; `irrevocable` moves it to that state. `retry_at` is when it
    /// is tried next (any node may then take it, in a shared store).
    RevokeFailed {
        id: LeaseId,
        attempts: u32,
        last_error: String,
        irrevocable: bool,
        retry_at: DateTime<Utc>,
    },
    /// A credential was made for a lease that another node had meanwhile
    /// rolled back (its issuing node was out of touch and declared dead):
    /// the lease goes back to `revoking`, claimed by this node, so the
    /// credential is removed too. Applies in any state but `active`.
    Reopen { id: LeaseId },
    /// Any non-final state → `revoked`.
    Revoked { id: LeaseId, at: DateTime<Utc> },
    /// Removes the lease whatever its state (`force`, purge).
    Delete { id: LeaseId },
}

impl Write {
    /// The lease this write concerns.
    pub fn id(&self) -> &LeaseId {
        match self {
            Write::Insert(lease) => &lease.id,
            Write::Activate { id, .. }
            | Write::Renew { id, .. }
            | Write::StartRevoking { id }
            | Write::RevokeFailed { id, .. }
            | Write::Revoked { id, .. }
            | Write::Reopen { id }
            | Write::Delete { id } => id,
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open lease store {location}: {message}")]
    Open { location: String, message: String },
    /// A lease with this id already exists.
    #[error("lease {0} already exists")]
    Duplicate(LeaseId),
    /// A read or write failed.
    #[error("lease store failed: {0}")]
    Io(String),
    /// The store's writer has stopped (shutdown or a fatal error).
    #[error("lease store is closed")]
    Closed,
    /// A write under a claim was refused: the claim lapsed and was taken
    /// (by another node, or another run), so this holder must stop.
    #[error(
        "{holder} no longer holds the claim on {name}: it lapsed and was taken over; nothing was written"
    )]
    ClaimLost { name: String, holder: String },
}

/// Durable lease storage.
#[async_trait]
pub trait LeaseStore: Send + Sync + Debug {
    /// Applies one write durably. `Ok(false)` when the lease was not in a
    /// state the write applies to (or does not exist).
    async fn write(&self, write: Write) -> Result<bool, StoreError>;

    /// One lease, in any state.
    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError>;

    /// Reads a lease and claims it for this node, to revoke or renew it:
    /// in a store several nodes share, exactly one node works on a lease
    /// at a time. Granted when nobody holds it, this node does, or the
    /// holder's claim ended (it expired, or the holder stopped
    /// heartbeating). A revoked lease is granted too, and so is a
    /// `pending` one only to the node issuing it or once that node is dead.
    /// The claim ends with the write that records the work's outcome
    /// (renewed, revoked, failed) or with [`release`](Self::release).
    /// This default, for a store of one node, only reads.
    async fn claim(&self, id: &LeaseId) -> Result<Claim, StoreError> {
        Ok(match self.get(id).await? {
            Some(lease) => Claim::Granted(lease),
            None => Claim::Missing,
        })
    }

    /// [`claim`](Self::claim)s a lease to revoke it now (before its
    /// expiry, or a rollback). A store that can also moves a `pending` or
    /// `active` lease to `revoking` in the same step, and answers `true`;
    /// the lease comes back as it was before. On `false` the caller records
    /// [`Write::StartRevoking`] itself. The shared store marks in its claim
    /// statement, so such a revocation waits on one durable write
    /// (`Revoked`); this default, for a store of one node, only reads.
    async fn claim_to_revoke(&self, id: &LeaseId) -> Result<(Claim, bool), StoreError> {
        Ok((self.claim(id).await?, false))
    }

    /// Gives up this node's claim on a lease, if it holds one.
    async fn release(&self, _id: &LeaseId) -> Result<(), StoreError> {
        Ok(())
    }

    /// The store's side of a cluster of nodes, for a store several nodes
    /// share; `None` for a store of one node.
    fn cluster(&self) -> Option<&dyn cluster::Cluster> {
        None
    }

    /// Leases whose id starts with `prefix` (all with ""), in any state
    /// but those listed in `exclude`, ordered by id: the `page` of them.
    async fn list(
        &self,
        prefix: &str,
        exclude: &[LeaseState],
        page: Page<'_>,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Up to `limit` of this node's leases that are `pending`, `revoking`
    /// or `irrevocable`, by id after `after`: what start-up schedules
    /// whatever their time (a rollback, a retry), a page at a time.
    async fn settling(&self, after: Option<&LeaseId>, limit: usize) -> Result<Vec<Unfinished>, StoreError>;

    /// Up to `limit` `active` leases, of every node, whose expiry falls in
    /// `span`, in the order `(expires_at, id)` from `from` on: what the
    /// expiry window loads (DESIGN §8).
    async fn expiring(&self, span: Span, from: Option<&Cursor>, limit: usize)
        -> Result<SpanPage, StoreError>;

    /// Up to `limit` of this node's `active` leases whose expiring warning
    /// ([`crate::expiry::warning_at`] of their issue and expiry, within a
    /// millisecond: the store rounds down) falls in `span`, in that
    /// order from `from` on.
    async fn warned(&self, span: Span, from: Option<&Cursor>, limit: usize) -> Result<SpanPage, StoreError>;

    /// Which of `usernames` a lease still covers, on any connection: one
    /// in any state but `revoked`, or revoked at or after `revoked_since`
    /// (a revocation that may still be settling). These are the users tidy
    /// must leave alone; a user whose every lease was revoked before
    /// `revoked_since` should not exist, and is a stray. This default reads
    /// every lease; stores answer it from an index (`username` on SQLite,
    /// `(connection, username)` on PostgreSQL).
    async fn leased_usernames(
        &self,
        usernames: &[String],
        revoked_since: DateTime<Utc>,
    ) -> Result<HashSet<String>, StoreError> {
        let wanted: HashSet<&str> = usernames.iter().map(String::as_str).collect();
        let leases = self.list("", &[], Page::ALL).await?;
        Ok(leases
            .into_iter()
            .filter(|l| l.state != LeaseState::Revoked || l.revoked_at.is_none_or(|at| at >= revoked_since))
            .map(|l| l.username)
            .filter(|u| wanted.contains(u.as_str()))
            .collect())
    }

    /// How many leases not yet `revoked` each (role, owner policy) holds:
    /// what `max_leases` counts, read once at start-up. In a store several
    /// nodes share, the leases this node issued: each node counts its own.
    async fn live_counts(&self) -> Result<Vec<(String, Option<String>, u64)>, StoreError>;

    /// The active leases whose credential was delivered to a systemd unit
    /// (`owner.unit`); in a store several nodes share, those this node
    /// issued (the unit runs on its host). Read at start-up, to watch
    /// their units again.
    async fn unit_bound(&self) -> Result<Vec<Lease>, StoreError>;

    /// The newest lease issued for this idempotency digest, in any state.
    async fn find_idempotent(&self, digest: &str) -> Result<Option<Lease>, StoreError>;

    /// How many leases the store holds of each role in each state (every
    /// state, `revoked` included), for the `lessor_leases` gauges; a pair
    /// with none is left out. This default reads every lease; stores answer
    /// it with one `GROUP BY`.
    async fn count_by_role_and_state(&self) -> Result<Vec<(String, LeaseState, u64)>, StoreError> {
        let mut counts: HashMap<(String, LeaseState), u64> = HashMap::new();
        for lease in self.list("", &[], Page::ALL).await? {
            *counts.entry((lease.role, lease.state)).or_default() += 1;
        }
        Ok(counts.into_iter().map(|((role, state), n)| (role, state, n)).collect())
    }

    /// Deletes `revoked` leases revoked before `before`; returns how many.
    async fn purge_revoked(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// One static account's rotation state.
    async fn static_get(&self, name: &str) -> Result<Option<StaticRecord>, StoreError>;

    /// The names of every static account with a row (`store migrate`).
    async fn static_names(&self) -> Result<Vec<String>, StoreError>;

    /// Records a static account's state durably (insert or replace),
    /// whoever holds its claim: only for copying a store (`store migrate`),
    /// where no rotation runs. A rotation writes with
    /// [`static_write`](Self::static_write).
    async fn static_put(&self, record: StaticRecord) -> Result<(), StoreError>;

    /// Records a static account's state durably under `claim`: applied only
    /// while the account's row still carries the claim's token, else
    /// [`StoreError::ClaimLost`] and nothing changes. The claim is kept.
    async fn static_write(&self, record: StaticRecord, claim: &StaticClaim) -> Result<(), StoreError>;

    /// Claims the right to run `name`'s job (its rotation) for `holder`,
    /// for `ttl`: granted when nobody holds it, the claim lapsed, or
    /// `holder` holds it already (a run that crashed). Every grant carries
    /// a new token, which fences off whoever held the claim before. The
    /// lapse is judged by the store's clock (a shared store's `now()`, so
    /// nodes whose clocks differ agree; the embedded store's is the node's
    /// own). With a store shared by several nodes this is what makes
    /// exactly one of them rotate.
    async fn static_claim(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<StaticClaim>, StoreError>;

    /// Extends `claim` to `ttl` from now (the store's clock); `false` when
    /// the claim is no longer this one (it lapsed and was taken).
    async fn static_renew(&self, claim: &StaticClaim, ttl: std::time::Duration) -> Result<bool, StoreError>;

    /// Gives `claim` up, if it is still the account's claim.
    async fn static_release(&self, claim: &StaticClaim) -> Result<(), StoreError>;

    /// Whether the store answers now, for `health`: a cheap round trip
    /// for a store across the network; the embedded store is always there.
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Transactions committed so far: against the number of writes it
    /// shows how well group commit batches. 0 if not counted. (The daemon
    /// exports the same count as `lessor_store_commits_total`.)
    fn commits(&self) -> u64 {
        0
    }
}
