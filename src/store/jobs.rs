//! What a store's writer is asked to do: the same jobs for the SQLite
//! writer thread and the PostgreSQL writer task, each answered once its
//! batch is committed.

use tokio::sync::oneshot;

use super::{StaticRecord, StoreError, Write};

/// One job for a store's writer, with where its answer goes.
// Purges are rare: boxing every write to make them smaller is not worth it.
#[allow(clippy::large_enum_variant)]
pub(super) enum Job {
    Write(Write, oneshot::Sender<Result<bool, StoreError>>),
    /// A static account's state, or a claim on its rotation.
    Static(StaticWrite, oneshot::Sender<Result<bool, StoreError>>),
    /// Deletes `revoked` leases revoked before this many epoch milliseconds.
    Purge(i64, oneshot::Sender<Result<u64, StoreError>>),
}

impl Job {
    /// Sends the outcome (rows changed) to the caller, who may have gone.
    pub(super) fn answer(self, outcome: Result<u64, StoreError>) {
        match self {
            Job::Write(_, reply) | Job::Static(_, reply) => {
                let _ = reply.send(outcome.map(|changed| changed > 0));
            }
            Job::Purge(_, reply) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// A write to `static_accounts`.
// Few and rare: boxing the record to make claims smaller is not worth it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum StaticWrite {
    /// Insert or replace an account's state (its claim is kept).
    Put(StaticRecord),
    /// Take the account's rotation claim (see `LeaseStore::static_claim`);
    /// a row for the account is made if there is none yet.
    Claim { name: String, holder: String, now: i64, until: i64 },
    /// Give the claim up, if `holder` has it.
    Release { name: String, holder: String },
}
