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

/// The sending side of a writer's queue, with one method per write, so
/// both stores hand their writes over the same way.
#[derive(Debug, Clone)]
pub(super) struct Queue(pub(super) tokio::sync::mpsc::Sender<Job>);

impl Queue {
    async fn submit<T>(
        &self,
        job: Job,
        reply: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.0.send(job).await.map_err(|_| StoreError::Closed)?;
        reply.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn write(&self, write: Write) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Write(write, reply), answer).await
    }

    pub(super) async fn purge(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Purge(before.timestamp_millis(), reply), answer).await
    }

    pub(super) async fn static_put(&self, record: StaticRecord) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Static(StaticWrite::Put(record), reply), answer).await.map(drop)
    }

    pub(super) async fn static_claim(
        &self,
        name: &str,
        holder: &str,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let claim = StaticWrite::Claim {
            name: name.to_string(),
            holder: holder.to_string(),
            now: now.timestamp_millis(),
            until: until.timestamp_millis(),
        };
        self.submit(Job::Static(claim, reply), answer).await
    }

    pub(super) async fn static_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let release = StaticWrite::Release { name: name.to_string(), holder: holder.to_string() };
        self.submit(Job::Static(release, reply), answer).await.map(drop)
    }
}
