//! Lease claims on the PostgreSQL store (see [`crate::store::LeaseStore::claim`]),
//! gathered into batches.
//!
//! A mass expiry asks for thousands of claims at once, and one `UPDATE`
//! per lease would hold revocation to what a few connections' round trips
//! allow. A gatherer takes every claim waiting (up to [`MAX_BATCH`]) while
//! at most [`BATCHES`] batches are in flight, so claims share a statement
//! under load and cost one round trip alone. A batch locks its rows in id
//! order and skips those another transaction holds; those are then claimed
//! one by one, waiting for that transaction as a lone claim does. So a
//! batch never waits on another node's, nor deadlocks with it, and every
//! claim gets the answer a lone claim would.
//!
//! A claim to revoke a lease now also moves a `pending` or `active` lease
//! to `revoking` in the same statement
//! ([`crate::store::LeaseStore::claim_to_revoke`]): the revocation then
//! needs one durable write of its own, the one that records it done.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::cluster::{CLAIMABLE, CLAIM_TTL_MS};
use super::{lease_from_row, query, PostgresStore, CLAIM_LOCK_WAIT_MS, LEASE_COLUMNS};
use crate::lease::{LeaseId, LeaseState};
use crate::store::{Claim, StoreError};

/// The most claims one statement takes.
const MAX_BATCH: usize = 500;
/// Batches in flight at once (each on a connection of the read pool).
const BATCHES: usize = 2;
/// How many columns [`LEASE_COLUMNS`] selects.
const LEASE_COLUMN_COUNT: usize = 20;

/// The part of a claim's `UPDATE` that marks a `pending` or `active` lease
/// `revoking` when the claim is to revoke it now (`k.mark`). `$6` is this
/// node's clock, for `retry_at` as `StartRevoking` sets it. A plain claim
/// changes no indexed column, so PostgreSQL can update the row in place.
const MARK: &str = "state = CASE WHEN k.mark AND l.state IN ('pending', 'active') \
       THEN 'revoking' ELSE l.state END, \
     retry_at = CASE WHEN k.mark AND l.state IN ('pending', 'active') THEN $6 ELSE l.retry_at END";

/// One claim waiting for its batch.
struct Job {
    id: LeaseId,
    /// A claim to revoke now: see [`MARK`].
    mark: bool,
    /// The node timeout in ms (the same for every job of a store).
    timeout_ms: i64,
    reply: oneshot::Sender<Result<(Claim, bool), StoreError>>,
}

/// The queue of a store's claim gatherer.
pub(super) struct Claims {
    queue: mpsc::UnboundedSender<Job>,
}

impl Claims {
    /// Starts the gatherer, which claims for `node` on `readers`.
    pub(super) fn start(readers: Pool, location: String, node: String) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(gather(Claimer { readers, location, node }, jobs));
        Self { queue }
    }
}

impl PostgresStore {
    /// Claims `id` for this node, in the next batch; with `mark`, to revoke
    /// it now (see [`MARK`]). The lease as it was, and whether it was
    /// marked `revoking`.
    pub(super) async fn claim_lease(&self, id: &LeaseId, mark: bool) -> Result<(Claim, bool), StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { id: id.clone(), mark, timeout_ms: self.timeout_ms(), reply };
        if self.claims.queue.send(job).is_err() {
            return Err(self.failed("claim a lease", "the claim gatherer has stopped"));
        }
        answer.await.unwrap_or_else(|_| Err(self.failed("claim a lease", "the claim was dropped unanswered")))
    }

    /// Gives up this node's claim on `id`.
    pub(super) async fn release_lease(&self, id: &LeaseId) -> Result<(), StoreError> {
        self.query(
            "release a claim",
            "UPDATE leases SET claimed_by = NULL, claim_until = NULL WHERE id = $1 AND claimed_by = $2",
            &[&id.as_str(), &self.node],
        )
        .await
        .map(drop)
    }
}

/// Takes what is queued, a batch at a time, until the store is dropped.
async fn gather(claimer: Claimer, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(BATCHES));
    while let Some(first) = jobs.recv().await {
        // Claims queue up while every slot is busy: the next batch is
        // taken only once it can run.
        let slot = Arc::clone(&slots).acquire_owned().await.expect("semaphore never closed");
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let claimer = claimer.clone();
        tokio::spawn(async move {
            claimer.run(batch).await;
            drop(slot);
        });
    }
}

/// What a batch needs of its store.
#[derive(Clone)]
struct Claimer {
    readers: Pool,
    location: String,
    node: String,
}

impl Claimer {
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        query(&self.readers, &self.location, what, sql, params).await
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(format!("{}: {what}: {e}", self.location))
    }

    /// Answers every job of `batch`.
    async fn run(&self, mut batch: Vec<Job>) {
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let answer = self.claim_one(&job, Utc::now().timestamp_millis()).await;
            let _ = job.reply.send(answer);
            return;
        }
        let mut settled = match self.claim_many(&batch).await {
            Ok(settled) => settled,
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Io(message.clone())));
                }
                return;
            }
        };
        // Rows another transaction held (and ids that are not there, or
        // that came twice): claimed alone.
        let mut alone = Vec::new();
        for job in batch {
            match settled.remove(job.id.as_str()) {
                Some(claim) => {
                    let _ = job.reply.send(Ok(claim));
                }
                None => alone.push(job),
            }
        }
        let now = Utc::now().timestamp_millis();
        futures_util::future::join_all(alone.into_iter().map(|job| async move {
            let answer = self.claim_one(&job, now).await;
            let _ = job.reply.send(answer);
        }))
        .await;
    }

    /// Claims what it can of `batch` in one statement; the answer of every
    /// lease it could lock.
    async fn claim_many(&self, batch: &[Job]) -> Result<HashMap<String, (Claim, bool)>, StoreError> {
        let ids: Vec<&str> = batch.iter().map(|job| job.id.as_str()).collect();
        let marks: Vec<bool> = batch.iter().map(|job| job.mark).collect();
        let timeout_ms = batch[0].timeout_ms;
        let now = Utc::now().timestamp_millis();
        // `locked` keeps each lease's state from before the claim, which
        // the `UPDATE`'s own RETURNING no longer sees.
        let sql = format!(
            "WITH locked AS (SELECT l.id AS lid, l.state AS was, j.mark \
               FROM leases l JOIN unnest($1::text[], $5::bool[]) AS j(id, mark) ON l.id = j.id \
               ORDER BY l.id FOR UPDATE OF l SKIP LOCKED), \
             claimed AS (UPDATE leases l SET claimed_by = $2, claim_until = lessor_now_ms() + $4, {MARK} \
               FROM locked k WHERE l.id = k.lid AND l.state <> 'revoked' AND {CLAIMABLE} \
               RETURNING {LEASE_COLUMNS}, k.was) \
             SELECT c.*, k.lid FROM locked k LEFT JOIN claimed c ON c.id = k.lid"
        );
        let params: [&(dyn ToSql + Sync); 6] = [&ids, &self.node, &timeout_ms, &CLAIM_TTL_MS, &marks, &now];
        let rows = self.query("claim leases", &sql, &params).await?;
        let mut settled = HashMap::with_capacity(rows.len());
        let mut not_granted = Vec::new();
        for row in &rows {
            let id: String = row.get(LEASE_COLUMN_COUNT + 1);
            if row.get::<_, Option<String>>(0).is_some() {
                settled.insert(id, self.granted(row)?);
            } else {
                not_granted.push(id);
            }
        }
        if !not_granted.is_empty() {
            let ids: Vec<&str> = not_granted.iter().map(String::as_str).collect();
            settled.extend(
                self.read_claims(&ids, timeout_ms).await?.into_iter().map(|(id, c)| (id, (c, false))),
            );
        }
        Ok(settled)
    }

    /// A claimed row (the lease's columns, then its state before the
    /// claim): the lease as it was, and whether the claim marked it.
    fn granted(&self, row: &tokio_postgres::Row) -> Result<(Claim, bool), StoreError> {
        let mut lease = lease_from_row(row).map_err(|e| self.failed("read a lease", e))?;
        let was: String = row.get(LEASE_COLUMN_COUNT);
        let was =
            LeaseState::parse(&was).ok_or_else(|| self.failed("read a lease", format!("state {was:?}")))?;
        let marked = was != lease.state;
        lease.state = was;
        Ok((Claim::Granted(lease), marked))
    }

    /// Claims `job`'s lease alone, waiting for a transaction that holds
    /// its row. `now` is this node's clock (ms).
    async fn claim_one(&self, job: &Job, now: i64) -> Result<(Claim, bool), StoreError> {
        let (id, timeout_ms) = (&job.id, job.timeout_ms);
        let sql = format!(
            "WITH k AS (SELECT l.id AS lid, l.state AS was, $5::bool AS mark FROM leases l \
               WHERE l.id = $1 FOR UPDATE OF l) \
             UPDATE leases l SET claimed_by = $2, claim_until = lessor_now_ms() + $4, {MARK} \
             FROM k WHERE l.id = k.lid AND l.state <> 'revoked' AND {CLAIMABLE} \
             RETURNING {LEASE_COLUMNS}, k.was"
        );
        let params: [&(dyn ToSql + Sync); 6] =
            [&id.as_str(), &self.node, &timeout_ms, &CLAIM_TTL_MS, &job.mark, &now];
        let client = self.readers.get().await.map_err(|e| self.failed("claim a lease", e))?;
        let statement = client.prepare_cached(&sql).await.map_err(|e| self.failed("claim a lease", e))?;
        let busy = match client.query(&statement, &params).await {
            Ok(rows) => match rows.first() {
                Some(row) => return self.granted(row),
                None => false,
            },
            // Another transaction held the row for longer than the claim
            // waits: a node stopped mid-write, until the store ends its
            // transaction. The lease is busy; look again shortly.
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => true,
            Err(e) => return Err(self.failed("claim a lease", e)),
        };
        drop(client);
        let claim = self.read_claims(&[id.as_str()], timeout_ms).await?.remove(id.as_str());
        let claim = match claim {
            Some(Claim::Held { by, .. }) if busy => {
                let again = chrono::Duration::milliseconds(i64::from(CLAIM_LOCK_WAIT_MS));
                Claim::Held { by, until: Utc::now() + again }
            }
            Some(claim) => claim,
            None => Claim::Missing,
        };
        Ok((claim, false))
    }

    /// The answer for leases that were not granted: revoked (granted, as
    /// there is nothing left to do), someone else's for now, or missing
    /// (absent from the map).
    async fn read_claims(&self, ids: &[&str], timeout_ms: i64) -> Result<HashMap<String, Claim>, StoreError> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS}, coalesce(l.claimed_by, l.node), \
             least(coalesce(l.claim_until, 9223372036854775807), \
                   (SELECT n.heartbeat_at + $2 FROM nodes n WHERE n.node_id = coalesce(l.claimed_by, l.node))), \
             lessor_now_ms() FROM leases l WHERE l.id = ANY($1)"
        );
        let rows = self.query("read claimed leases", &sql, &[&ids, &timeout_ms]).await?;
        let mut claims = HashMap::with_capacity(rows.len());
        for row in &rows {
            let lease = lease_from_row(row).map_err(|e| self.failed("read a lease", e))?;
            let id = lease.id.as_str().to_string();
            if lease.state == LeaseState::Revoked {
                claims.insert(id, Claim::Granted(lease));
                continue;
            }
            let holder: String = row.get(LEASE_COLUMN_COUNT);
            let until: Option<i64> = row.get(LEASE_COLUMN_COUNT + 1);
            let store_now: i64 = row.get(LEASE_COLUMN_COUNT + 2);
            // From the store's clock to this node's.
            let left = until.unwrap_or(store_now).saturating_sub(store_now).clamp(0, CLAIM_TTL_MS);
            claims.insert(
                id,
                Claim::Held { by: holder, until: Utc::now() + chrono::Duration::milliseconds(left) },
            );
        }
        Ok(claims)
    }
}
