//! What a store's writer is asked to do: the same jobs for the SQLite
//! writer thread and the PostgreSQL writer task, each answered once its
//! batch is committed.

use tokio::sync::oneshot;

use super::{StaticClaim, StaticRecord, StoreError, Write};

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
    /// Insert or replace an account's state (its claim is kept); with a
    /// claim, only while the row carries the claim's token.
    Put(StaticRecord, Option<StaticClaim>),
    /// Take the account's claim for `ttl_ms` by the store's clock (see
    /// `LeaseStore::static_claim`); a row for the account is made if there
    /// is none yet.
    Claim { claim: StaticClaim, ttl_ms: i64 },
    /// Extend the claim, if the row still carries its token.
    Renew { claim: StaticClaim, ttl_ms: i64 },
    /// Give the claim up, if the row still carries its token.
    Release(StaticClaim),
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

    async fn static_job(&self, write: StaticWrite) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Static(write, reply), answer).await
    }

    pub(super) async fn static_put(&self, record: StaticRecord) -> Result<(), StoreError> {
        self.static_job(StaticWrite::Put(record, None)).await.map(drop)
    }

    pub(super) async fn static_write(
        &self,
        record: StaticRecord,
        claim: &StaticClaim,
    ) -> Result<(), StoreError> {
        match self.static_job(StaticWrite::Put(record, Some(claim.clone()))).await? {
            true => Ok(()),
            false => Err(StoreError::ClaimLost { name: claim.name.clone(), holder: claim.holder.clone() }),
        }
    }

    pub(super) async fn static_claim(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<StaticClaim>, StoreError> {
        let claim = StaticClaim::new(name, holder);
        let write = StaticWrite::Claim { claim: claim.clone(), ttl_ms: millis(ttl) };
        Ok(self.static_job(write).await?.then_some(claim))
    }

    pub(super) async fn static_renew(
        &self,
        claim: &StaticClaim,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.static_job(StaticWrite::Renew { claim: claim.clone(), ttl_ms: millis(ttl) }).await
    }

    pub(super) async fn static_release(&self, claim: &StaticClaim) -> Result<(), StoreError> {
        self.static_job(StaticWrite::Release(claim.clone())).await.map(drop)
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
