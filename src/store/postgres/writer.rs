//! The PostgreSQL store's writer task: it takes every queued write (up to
//! [`MAX_BATCH`]), applies each inside its own savepoint, commits the batch
//! once and then answers every caller (group commit). A failed write (a
//! duplicate id) is rolled back to its savepoint alone; a lost connection
//! fails the batch, and the next batch connects again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Transaction};

use super::{Job, StaticWrite, MAX_BATCH};
use crate::store::{StoreError, Write};

pub(super) struct Writer {
    pub config: tokio_postgres::Config,
    /// The connection and the task driving it; `None` after it was lost.
    pub client: Option<(Client, JoinHandle<()>)>,
    pub queue: mpsc::Receiver<Job>,
    pub commits: Arc<AtomicU64>,
    pub location: String,
    pub node: String,
}

/// Batches jobs until every sender is gone.
pub(super) async fn run(mut writer: Writer) {
    let mut batch = Vec::new();
    while let Some(job) = writer.queue.recv().await {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match writer.queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        writer.commit_batch(&mut batch).await;
    }
    if let Some((_, driver)) = writer.client.take() {
        driver.abort();
    }
}

/// Why a batch failed as a whole.
enum BatchError {
    /// The connection is unusable: connect again before the next batch.
    Connection(String),
    Other(String),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() {
            Self::Connection(e.to_string())
        } else {
            Self::Other(e.to_string())
        }
    }
}

impl Writer {
    async fn connected(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            if let Some((_, driver)) = self.client.take() {
                driver.abort();
            }
        }
        if self.client.is_none() {
            let (client, connection) = self.config.connect(NoTls).await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            // The lock went with the lost session: no write before it is ours again.
            if let Err(e) = super::take_store_lock(&client).await {
                driver.abort();
                return Err(e);
            }
            self.client = Some((client, driver));
        }
        Ok(&mut self.client.as_mut().expect("connected above").0)
    }

    /// Applies `batch` in one transaction, commits, then answers every job
    /// (emptying `batch`). Nobody hears of success before the commit.
    async fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let started = Instant::now();
        let node = self.node.clone();
        let outcome = match self.connected().await {
            Err(e) => Err(BatchError::Connection(format!("cannot connect: {e}"))),
            Ok(client) => apply_batch(client, batch, &node).await,
        };
        match outcome {
            Ok(outcomes) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::store_commit(started.elapsed());
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    job.answer(outcome);
                }
            }
            Err(e) => {
                let message = match e {
                    BatchError::Connection(e) => {
                        if let Some((_, driver)) = self.client.take() {
                            driver.abort();
                        }
                        e
                    }
                    BatchError::Other(e) => e,
                };
                let message = format!("{}: cannot commit {} write(s): {message}", self.location, batch.len());
                for job in batch.drain(..) {
                    job.answer(Err(StoreError::Io(message.clone())));
                }
            }
        }
    }
}

async fn apply_batch(
    client: &mut Client,
    batch: &[Job],
    node: &str,
) -> Result<Vec<Result<u64, StoreError>>, BatchError> {
    let mut tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = tx.savepoint("job").await?;
        let outcome = apply(&savepoint, job, node).await;
        match outcome {
            Ok(changed) => {
                savepoint.commit().await?;
                outcomes.push(Ok(changed));
            }
            Err(e) => {
                // Rolls back to the savepoint: a failed job is undone alone.
                savepoint.rollback().await?;
                outcomes.push(Err(e));
            }
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Applies one job; the number of rows it changed. A database error other
/// than a duplicate lease is a failed write.
async fn apply(tx: &Transaction<'_>, job: &Job, node: &str) -> Result<u64, StoreError> {
    let failed = |what: String, e: tokio_postgres::Error| StoreError::Io(format!("{what}: {e}"));
    let write = match job {
        Job::Purge(before, _) => {
            return tx
                .execute("DELETE FROM leases WHERE state = 'revoked' AND revoked_at < $1", &[before])
                .await
                .map_err(|e| failed("purge revoked leases".into(), e));
        }
        Job::Static(write, _) => return apply_static(tx, write).await,
        Job::Write(write, _) => write,
    };
    let id = write.id().as_str();
    match write {
        Write::Insert(lease) => {
            let inserted = tx
                .execute(
                    "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, \
                     max_expires_at, renewable, attempts, last_error, owner_uid, owner_gid, owner_pid, \
                     plugin_data, revoked_at, owner_policy, idempotency, node) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
                     ON CONFLICT DO NOTHING",
                    &[
                        &id,
                        &lease.role,
                        &lease.connection,
                        &lease.username,
                        &lease.state.as_str(),
                        &lease.issued_at.timestamp_millis(),
                        &lease.expires_at.timestamp_millis(),
                        &lease.max_expires_at.timestamp_millis(),
                        &lease.renewable,
                        &(lease.attempts as i32),
                        &lease.last_error,
                        &i64::from(lease.owner.uid),
                        &i64::from(lease.owner.gid),
                        &lease.owner.pid,
                        &lease.plugin_data,
                        &lease.revoked_at.map(|t| t.timestamp_millis()),
                        &lease.owner.policy,
                        &lease.idempotency,
                        &node,
                    ],
                )
                .await
                .map_err(|e| failed(format!("insert lease {id}"), e))?;
            if inserted == 0 {
                return Err(StoreError::Duplicate(lease.id.clone()));
            }
            Ok(inserted)
        }
        Write::Activate { plugin_data, expires_at, .. } => tx
            .execute(
                "UPDATE leases SET state = 'active', plugin_data = $2, expires_at = coalesce($3, expires_at) \
                 WHERE id = $1 AND state = 'pending'",
                &[&id, plugin_data, &expires_at.map(|t| t.timestamp_millis())],
            )
            .await
            .map_err(|e| failed(format!("activate lease {id}"), e)),
        Write::Renew { expires_at, .. } => tx
            .execute(
                "UPDATE leases SET expires_at = $2 WHERE id = $1 AND state = 'active'",
                &[&id, &expires_at.timestamp_millis()],
            )
            .await
            .map_err(|e| failed(format!("renew lease {id}"), e)),
        Write::StartRevoking { .. } => tx
            .execute(
                "UPDATE leases SET state = 'revoking' WHERE id = $1 AND state IN ('pending', 'active', 'irrevocable')",
                &[&id],
            )
            .await
            .map_err(|e| failed(format!("start revoking lease {id}"), e)),
        Write::RevokeFailed { attempts, last_error, irrevocable, .. } => tx
            .execute(
                "UPDATE leases SET attempts = $2, last_error = $3, \
                 state = CASE WHEN $4 THEN 'irrevocable' ELSE state END \
                 WHERE id = $1 AND state IN ('revoking', 'irrevocable')",
                &[&id, &(*attempts as i32), last_error, irrevocable],
            )
            .await
            .map_err(|e| failed(format!("record failed revocation of lease {id}"), e)),
        Write::Revoked { at, .. } => tx
            .execute(
                "UPDATE leases SET state = 'revoked', revoked_at = $2 WHERE id = $1 AND state <> 'revoked'",
                &[&id, &at.timestamp_millis()],
            )
            .await
            .map_err(|e| failed(format!("mark lease {id} revoked"), e)),
        Write::Delete { .. } => tx
            .execute("DELETE FROM leases WHERE id = $1", &[&id])
            .await
            .map_err(|e| failed(format!("delete lease {id}"), e)),
    }
}

async fn apply_static(tx: &Transaction<'_>, write: &StaticWrite) -> Result<u64, StoreError> {
    let failed = |what: String, e: tokio_postgres::Error| StoreError::Io(format!("{what}: {e}"));
    let millis = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
    match write {
        StaticWrite::Put(r) => {
            let pending = r.pending.as_ref();
            tx.execute(
                "INSERT INTO static_accounts (name, version, current_username, current_sealed, rotated_at, \
                 previous_username, previous_valid_until, previous_end_sessions, pending_version, \
                 pending_username, pending_sealed, pending_phase, pending_reason, pending_overlap_ms, \
                 next_rotation_at, failures, last_error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
                 ON CONFLICT (name) DO UPDATE SET version = $2, current_username = $3, current_sealed = $4, \
                 rotated_at = $5, previous_username = $6, previous_valid_until = $7, \
                 previous_end_sessions = $8, pending_version = $9, pending_username = $10, \
                 pending_sealed = $11, pending_phase = $12, pending_reason = $13, pending_overlap_ms = $14, \
                 next_rotation_at = $15, failures = $16, last_error = $17",
                &[
                    &r.name,
                    &(r.version as i64),
                    &r.current.as_ref().map(|c| &c.username),
                    &r.current.as_ref().map(|c| &c.sealed),
                    &millis(r.rotated_at),
                    &r.previous_username,
                    &millis(r.previous_valid_until),
                    &r.previous_end_sessions,
                    &pending.map(|p| p.version as i64),
                    &pending.map(|p| &p.credential.username),
                    &pending.map(|p| &p.credential.sealed),
                    &pending.map(|p| p.phase.as_str()),
                    &pending.and_then(|p| p.reason.as_ref()),
                    &pending.map(|p| p.overlap_ms as i64),
                    &millis(r.next_rotation_at),
                    &(r.failures as i32),
                    &r.last_error,
                ],
            )
            .await
            .map_err(|e| failed(format!("record static account {}", r.name), e))
        }
        StaticWrite::Claim { name, holder, now, until } => tx
            .execute(
                "INSERT INTO static_accounts (name, version, claimed_by, claim_until) VALUES ($1, 0, $2, $4) \
                 ON CONFLICT (name) DO UPDATE SET claimed_by = $2, claim_until = $4 \
                 WHERE static_accounts.claimed_by IS NULL OR static_accounts.claimed_by = $2 \
                 OR static_accounts.claim_until < $3",
                &[name, holder, now, until],
            )
            .await
            .map_err(|e| failed(format!("claim static account {name}"), e)),
        StaticWrite::Release { name, holder } => tx
            .execute(
                "UPDATE static_accounts SET claimed_by = NULL, claim_until = NULL WHERE name = $1 AND claimed_by = $2",
                &[name, holder],
            )
            .await
            .map_err(|e| failed(format!("release static account {name}"), e)),
    }
}
