//! The PostgreSQL store's writer task: it takes every queued write (up to
//! [`MAX_BATCH`]), applies them in one transaction, commits the batch once
//! and then answers every caller (group commit). The batch is pipelined:
//! its BEGIN, its writes (each a prepared statement) and its COMMIT are
//! sent together on the connection and read back together, one round
//! trip. A write that fails aborts the
//! transaction; the batch is then applied again one write per transaction,
//! so that write fails alone. A lost connection fails the batch, and the
//! next batch connects again.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_util::future::{join_all, maybe_done};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, GenericClient, Statement};

use super::{groups, MAX_BATCH};
use crate::store::jobs::{Job, StaticWrite};
use crate::store::{StoreError, Write};

pub(super) struct Writer {
    pub config: tokio_postgres::Config,
    /// The store connection's TLS (the plugin's connector).
    pub tls: lessor_postgres::PgTls,
    /// The connection and the task driving it; `None` after it was lost.
    pub client: Option<(Client, JoinHandle<()>)>,
    /// The connection's prepared statements; `None` until prepared.
    pub statements: Option<Statements>,
    pub queue: mpsc::Receiver<Job>,
    pub commits: Arc<AtomicU64>,
    pub location: String,
    pub node: String,
}

/// The writer's statements, prepared once per connection, so each write is
/// one message in the batch's pipeline.
pub(super) struct Statements {
    insert: Statement,
    activate: Statement,
    renew: Statement,
    start_revoking: Statement,
    revoke_failed: Statement,
    revoked: Statement,
    reopen: Statement,
    delete: Statement,
    purge: Statement,
    static_put: Statement,
    static_write: Statement,
    static_claim: Statement,
    static_renew: Statement,
    static_release: Statement,
    /// A batch's writes of one kind as one statement.
    groups: groups::Statements,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            insert: client
                .prepare(
                    "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, \
                     max_expires_at, renewable, attempts, last_error, owner_uid, owner_gid, owner_pid, \
                     plugin_data, revoked_at, owner_policy, idempotency, node, owner_unit) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            // The writes that record work on a lease are fenced: they apply
            // only while this node ($node) holds the lease's claim or nobody
            // does, so a node that was out of touch for longer than the node
            // timeout cannot overwrite the work of the node that took over.
            // Each ends the claim it was done under.
            activate: client
                .prepare(
                    "UPDATE leases SET state = 'active', plugin_data = $2, expires_at = coalesce($3, expires_at), \
                     claimed_by = NULL, claim_until = NULL \
                     WHERE id = $1 AND state = 'pending' AND (claimed_by IS NULL OR claimed_by = $4)",
                )
                .await?,
            renew: client
                .prepare(
                    "UPDATE leases SET expires_at = $2, renewed_at = $4, claimed_by = NULL, claim_until = NULL \
                     WHERE id = $1 AND state = 'active' AND (claimed_by IS NULL OR claimed_by = $3)",
                )
                .await?,
            start_revoking: client
                .prepare(
                    "UPDATE leases SET state = 'revoking', retry_at = $3 \
                     WHERE id = $1 AND state IN ('pending', 'active', 'irrevocable') \
                     AND (claimed_by IS NULL OR claimed_by = $2)",
                )
                .await?,
            revoke_failed: client
                .prepare(
                    "UPDATE leases SET attempts = $2, last_error = $3, \
                     state = CASE WHEN $4 THEN 'irrevocable' ELSE state END, retry_at = $5, \
                     claimed_by = NULL, claim_until = NULL \
                     WHERE id = $1 AND state IN ('revoking', 'irrevocable') \
                     AND (claimed_by IS NULL OR claimed_by = $6)",
                )
                .await?,
            revoked: client
                .prepare(
                    "UPDATE leases SET state = 'revoked', revoked_at = $2, claimed_by = NULL, claim_until = NULL \
                     WHERE id = $1 AND state <> 'revoked' AND (claimed_by IS NULL OR claimed_by = $3)",
                )
                .await?,
            // Not fenced: the credential this node just made must go, so
            // the lease is this node's to revoke, whoever held it.
            reopen: client
                .prepare(
                    "UPDATE leases SET state = 'revoking', revoked_at = NULL, retry_at = 0, \
                     claimed_by = $2, claim_until = lessor_now_ms() + $3 \
                     WHERE id = $1 AND state <> 'active'",
                )
                .await?,
            delete: client.prepare("DELETE FROM leases WHERE id = $1").await?,
            purge: client.prepare("DELETE FROM leases WHERE state = 'revoked' AND revoked_at < $1").await?,
            static_put: client
                .prepare(
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
                )
                .await?,
            // Under a claim the row exists (the claim made it) and is
            // written only while it carries the claim's token: a node whose
            // claim lapsed and was taken over changes nothing.
            static_write: client
                .prepare(
                    "UPDATE static_accounts SET version = $2, current_username = $3, current_sealed = $4, \
                     rotated_at = $5, previous_username = $6, previous_valid_until = $7, \
                     previous_end_sessions = $8, pending_version = $9, pending_username = $10, \
                     pending_sealed = $11, pending_phase = $12, pending_reason = $13, pending_overlap_ms = $14, \
                     next_rotation_at = $15, failures = $16, last_error = $17 \
                     WHERE name = $1 AND claimed_by = $18 AND claim_token = $19",
                )
                .await?,
            // Claims are measured by the store's clock, so nodes whose
            // clocks differ agree on when one lapsed.
            static_claim: client
                .prepare(
                    "INSERT INTO static_accounts (name, version, claimed_by, claim_until, claim_token) \
                     VALUES ($1, 0, $2, lessor_now_ms() + $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET claimed_by = $2, claim_until = lessor_now_ms() + $3, \
                     claim_token = $4 \
                     WHERE static_accounts.claimed_by IS NULL OR static_accounts.claimed_by = $2 \
                     OR static_accounts.claim_until < lessor_now_ms()",
                )
                .await?,
            static_renew: client
                .prepare(
                    "UPDATE static_accounts SET claim_until = lessor_now_ms() + $3 \
                     WHERE name = $1 AND claimed_by = $2 AND claim_token = $4",
                )
                .await?,
            static_release: client
                .prepare(
                    "UPDATE static_accounts SET claimed_by = NULL, claim_until = NULL, claim_token = NULL \
                     WHERE name = $1 AND claimed_by = $2 AND claim_token = $3",
                )
                .await?,
            groups: groups::Statements::prepare(client).await?,
        })
    }
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
    fn disconnect(&mut self) {
        if let Some((_, driver)) = self.client.take() {
            driver.abort();
        }
        self.statements = None;
    }

    async fn connected(&mut self) -> Result<(), BatchError> {
        if self.client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.disconnect();
        }
        if self.client.is_none() {
            let (client, driver) = self
                .tls
                .connect(&self.config)
                .await
                .map_err(|e| BatchError::Connection(super::connect_error(&e)))?;
            // The lock went with the lost session: no write before it is ours again.
            if let Err(e) = super::cluster::take_node_lock(&client, &self.node).await {
                driver.abort();
                return Err(BatchError::Connection(e));
            }
            self.client = Some((client, driver));
        }
        if self.statements.is_none() {
            let client = &self.client.as_ref().expect("connected above").0;
            self.statements = Some(Statements::prepare(client).await?);
        }
        Ok(())
    }

    /// Applies `batch` in one transaction, commits, then answers every job
    /// (emptying `batch`). Nobody hears of success before the commit.
    async fn commit_batch(&mut self, batch: &mut Vec<Job>) {
        let started = Instant::now();
        let outcome = match self.connected().await {
            Err(e) => Err(e),
            Ok(()) => {
                let (client, _) = self.client.as_mut().expect("connected");
                let statements = self.statements.as_ref().expect("prepared");
                apply_batch(client, statements, batch, &self.node).await
            }
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
                        self.disconnect();
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

/// Whether a job's outcome leaves its transaction usable (a duplicate is
/// an answer, not a failed statement).
fn kept(outcome: &Result<u64, StoreError>) -> bool {
    !matches!(outcome, Err(StoreError::Io(_)))
}

async fn apply_batch(
    client: &mut Client,
    statements: &Statements,
    batch: &[Job],
    node: &str,
) -> Result<Vec<Result<u64, StoreError>>, BatchError> {
    // The whole batch in one transaction and one round trip: its BEGIN,
    // its writes and its COMMIT go out together, in that order, and are
    // read back together. A write that fails on the server aborts the
    // transaction, the writes after it fail with it, and PostgreSQL ends a
    // failed transaction's COMMIT as a ROLLBACK. A write that fails before
    // it is sent (its parameters could not be encoded) fails nothing on
    // the server, so the batch then ends with a ROLLBACK instead. Either
    // way the batch committed exactly when every write succeeded.
    let shared = &*client;
    let parts = groups::plan(batch);
    let (begun, answers, ended, all_sent) = in_order(
        shared.batch_execute("BEGIN"),
        parts.iter().map(|part| apply_part(shared, statements, batch, part, node)),
        |all_sent| shared.batch_execute(if all_sent { "COMMIT" } else { "ROLLBACK" }),
    )
    .await;
    let mut outcomes: Vec<Option<Result<u64, StoreError>>> = batch.iter().map(|_| None).collect();
    for (i, outcome) in answers.into_iter().flatten() {
        outcomes[i] = Some(outcome);
    }
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("every job is in one part")).collect();
    // A BEGIN that failed leaves no telling what the writes did: start
    // again on a new connection.
    begun.map_err(|e| BatchError::Connection(e.to_string()))?;
    if all_sent && outcomes.iter().all(kept) {
        ended?;
        return Ok(outcomes);
    }
    // Not committed: the batch ended in a ROLLBACK, sent as such or made
    // one by the server (or the statement failed itself, and the next one
    // finds out why).
    // A statement failed, and the transaction with it: each write again in
    // a transaction of its own, so the one that fails fails alone.
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let tx = client.transaction().await?;
        let outcome = apply(&tx, statements, job, node).await;
        if kept(&outcome) {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Runs `first`, every one of `middle` and then `last(all_sent)` to
/// completion, and sends their requests in that order: tokio-postgres
/// sends a request when its future is first polled, so one pass polls
/// each once, in order, before anything else is awaited. (`join_all` would
/// not do: past 30 futures it may yield before polling the last ones, and
/// `last` would overtake them.) Each of `middle` must send everything it
/// sends at its first poll, as [`apply`] does (one statement per job); one
/// that is done at that first poll failed before sending anything, and
/// `all_sent` (also returned) is then false.
async fn in_order<A: Future, B: Future, C: Future>(
    first: A,
    middle: impl Iterator<Item = B>,
    last: impl FnOnce(bool) -> C,
) -> (A::Output, Vec<B::Output>, C::Output, bool) {
    let mut first = pin!(maybe_done(first));
    let mut middle: Vec<_> = middle.map(|f| Box::pin(maybe_done(f))).collect();
    let all_sent = std::future::poll_fn(|cx| {
        let _ = first.as_mut().poll(cx);
        let mut all_sent = true;
        for f in &mut middle {
            all_sent &= f.as_mut().poll(cx).is_pending();
        }
        Poll::Ready(all_sent)
    })
    .await;
    // Every request of `first` and `middle` is out, and `join!` polls
    // `last` in its first pass, with nothing awaited in between: the rest
    // may finish in any order.
    let mut last = pin!(maybe_done(last(all_sent)));
    futures_util::join!(first.as_mut(), join_all(middle.iter_mut()), last.as_mut());
    let taken = "every future was run to completion above";
    (
        first.take_output().expect(taken),
        middle.iter_mut().map(|f| f.as_mut().take_output().expect(taken)).collect(),
        last.take_output().expect(taken),
        all_sent,
    )
}

/// Applies one part of a batch ([`groups::plan`]) as one statement sent at
/// the future's first poll; the outcome of each of its jobs, by index.
async fn apply_part(
    client: &Client,
    st: &Statements,
    batch: &[Job],
    part: &groups::Part,
    node: &str,
) -> Vec<(usize, Result<u64, StoreError>)> {
    match part {
        groups::Part::One(i) => vec![(*i, apply(client, st, &batch[*i], node).await)],
        groups::Part::Group(kind, members) => {
            let outcomes = groups::apply(client, &st.groups, *kind, batch, members, node).await;
            members.iter().copied().zip(outcomes).collect()
        }
    }
}

/// Applies one job, as one statement sent at the future's first poll (a
/// batch's COMMIT goes out right behind it: [`in_order`]); the number of
/// rows it changed.
async fn apply(tx: &impl GenericClient, st: &Statements, job: &Job, node: &str) -> Result<u64, StoreError> {
    let failed = |what: String, e: tokio_postgres::Error| StoreError::Io(format!("{what}: {e}"));
    let write = match job {
        Job::Purge(before, _) => {
            return tx
                .execute(&st.purge, &[before])
                .await
                .map_err(|e| failed("purge revoked leases".into(), e));
        }
        Job::Static(write, _) => return apply_static(tx, st, write).await,
        Job::Write(write, _) => write,
    };
    let id = write.id().as_str();
    match write {
        Write::Insert(lease) => {
            let inserted = tx
                .execute(
                    &st.insert,
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
                        &lease.owner.unit,
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
            .execute(&st.activate, &[&id, plugin_data, &expires_at.map(|t| t.timestamp_millis()), &node])
            .await
            .map_err(|e| failed(format!("activate lease {id}"), e)),
        Write::Renew { expires_at, renewed_at, .. } => tx
            .execute(&st.renew, &[&id, &expires_at.timestamp_millis(), &node, &renewed_at.timestamp_millis()])
            .await
            .map_err(|e| failed(format!("renew lease {id}"), e)),
        Write::StartRevoking { .. } => tx
            .execute(&st.start_revoking, &[&id, &node, &chrono::Utc::now().timestamp_millis()])
            .await
            .map_err(|e| failed(format!("start revoking lease {id}"), e)),
        Write::RevokeFailed { attempts, last_error, irrevocable, retry_at, .. } => tx
            .execute(
                &st.revoke_failed,
                &[&id, &(*attempts as i32), last_error, irrevocable, &retry_at.timestamp_millis(), &node],
            )
            .await
            .map_err(|e| failed(format!("record failed revocation of lease {id}"), e)),
        Write::Revoked { at, .. } => tx
            .execute(&st.revoked, &[&id, &at.timestamp_millis(), &node])
            .await
            .map_err(|e| failed(format!("mark lease {id} revoked"), e)),
        Write::Reopen { .. } => tx
            .execute(&st.reopen, &[&id, &node, &super::cluster::CLAIM_TTL_MS])
            .await
            .map_err(|e| failed(format!("reopen lease {id}"), e)),
        Write::Delete { .. } => {
            tx.execute(&st.delete, &[&id]).await.map_err(|e| failed(format!("delete lease {id}"), e))
        }
    }
}

async fn apply_static(
    tx: &impl GenericClient,
    st: &Statements,
    write: &StaticWrite,
) -> Result<u64, StoreError> {
    let failed = |what: String, e: tokio_postgres::Error| StoreError::Io(format!("{what}: {e}"));
    let millis = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
    match write {
        StaticWrite::Put(r, claim) => {
            let pending = r.pending.as_ref();
            let (version, failures) = (r.version as i64, r.failures as i32);
            let (pending_version, pending_overlap) =
                (pending.map(|p| p.version as i64), pending.map(|p| p.overlap_ms as i64));
            let (rotated_at, previous_valid_until, next_rotation_at) =
                (millis(r.rotated_at), millis(r.previous_valid_until), millis(r.next_rotation_at));
            let holder = claim.as_ref().map(|c| &c.holder);
            let token = claim.as_ref().map(|c| c.token);
            let values: [&(dyn tokio_postgres::types::ToSql + Sync); 19] = [
                &r.name,
                &version,
                &r.current.as_ref().map(|c| &c.username),
                &r.current.as_ref().map(|c| &c.sealed),
                &rotated_at,
                &r.previous_username,
                &previous_valid_until,
                &r.previous_end_sessions,
                &pending_version,
                &pending.map(|p| &p.credential.username),
                &pending.map(|p| &p.credential.sealed),
                &pending.map(|p| p.phase.as_str()),
                &pending.and_then(|p| p.reason.as_ref()),
                &pending_overlap,
                &next_rotation_at,
                &failures,
                &r.last_error,
                &holder,
                &token,
            ];
            let result = match claim {
                Some(_) => tx.execute(&st.static_write, &values).await,
                None => tx.execute(&st.static_put, &values[..17]).await,
            };
            result.map_err(|e| failed(format!("record static account {}", r.name), e))
        }
        StaticWrite::Claim { claim, ttl_ms } => tx
            .execute(&st.static_claim, &[&claim.name, &claim.holder, ttl_ms, &claim.token])
            .await
            .map_err(|e| failed(format!("claim static account {}", claim.name), e)),
        StaticWrite::Renew { claim, ttl_ms } => tx
            .execute(&st.static_renew, &[&claim.name, &claim.holder, ttl_ms, &claim.token])
            .await
            .map_err(|e| failed(format!("renew the claim on static account {}", claim.name), e)),
        StaticWrite::Release(claim) => tx
            .execute(&st.static_release, &[&claim.name, &claim.holder, &claim.token])
            .await
            .map_err(|e| failed(format!("release static account {}", claim.name), e)),
    }
}
