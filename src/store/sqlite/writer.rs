//! The store's writer thread: it takes every queued write (up to
//! [`MAX_BATCH`]), applies each inside its own savepoint, commits the batch
//! once and then answers every caller (group commit). Each commit is
//! counted and timed (`lessor_store_commit_duration_seconds`): the time
//! from opening its transaction to the end of its fsync.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::{statics, MAX_BATCH};
use crate::lease::Lease;
use crate::store::jobs::Job;
use crate::store::{StoreError, Write};

/// The writer thread: batches jobs until every sender is gone.
pub(super) fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Job>,
    commits: &AtomicU64,
    path: &Path,
) {
    let mut batch = Vec::new();
    while let Some(job) = queue.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch, commits, path);
    }
}

/// Applies `batch` in one transaction, commits, then answers every job
/// (emptying `batch`). Nobody hears of success before the commit.
pub(super) fn commit_batch(conn: &mut Connection, batch: &mut Vec<Job>, commits: &AtomicU64, path: &Path) {
    let started = Instant::now();
    let outcomes = (|| -> rusqlite::Result<Vec<Result<u64, StoreError>>> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch.iter() {
            let savepoint = tx.savepoint()?;
            let outcome = apply(&savepoint, job, path);
            if outcome.is_ok() {
                savepoint.commit()?;
            } else {
                // Rolls back to the savepoint: a failed job is undone alone.
                savepoint.finish()?;
            }
            // Some errors (I/O, full disk) end the whole transaction; what
            // follows would run outside it, so give up on the batch.
            if tx.is_autocommit() {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some(format!(
                        "transaction aborted: {}",
                        outcome.err().map_or_else(String::new, |e| e.to_string())
                    )),
                ));
            }
            outcomes.push(outcome);
        }
        tx.commit()?;
        Ok(outcomes)
    })();

    match outcomes {
        Ok(outcomes) => {
            commits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::store_commit(started.elapsed());
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                job.answer(outcome);
            }
        }
        Err(e) => {
            let message = format!("{}: cannot commit {} write(s): {e}", path.display(), batch.len());
            for job in batch.drain(..) {
                job.answer(Err(StoreError::Io(message.clone())));
            }
        }
    }
}

/// Applies one job; the number of rows it changed.
fn apply(conn: &Connection, job: &Job, path: &Path) -> Result<u64, StoreError> {
    let failed = |what: &str, e: rusqlite::Error| StoreError::Io(format!("{}: {what}: {e}", path.display()));
    let write = match job {
        Job::Purge(before, _) => {
            return conn
                .prepare_cached("DELETE FROM leases WHERE state = 'revoked' AND revoked_at < ?1")
                .and_then(|mut s| s.execute([before]))
                .map(|n| n as u64)
                .map_err(|e| failed("purge revoked leases", e));
        }
        Job::Static(write, _) => return statics::apply(conn, write, path),
        Job::Write(write, _) => write,
    };
    let id = write.id().as_str();
    let changed = match write {
        Write::Insert(lease) => {
            let inserted = insert(conn, lease).map_err(|e| failed(&format!("insert lease {id}"), e))?;
            if inserted == 0 {
                return Err(StoreError::Duplicate(lease.id.clone()));
            }
            inserted
        }
        Write::Activate { plugin_data, expires_at, .. } => conn
            .prepare_cached(
                "UPDATE leases SET state = 'active', plugin_data = ?2, \
                 expires_at = coalesce(?3, expires_at) WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    json_text(plugin_data.as_ref())?,
                    expires_at.map(|t| t.timestamp_millis())
                ])
            })
            .map_err(|e| failed(&format!("activate lease {id}"), e))?,
        Write::Renew { expires_at, renewed_at, .. } => conn
            .prepare_cached(
                "UPDATE leases SET expires_at = ?2, renewed_at = ?3 WHERE id = ?1 AND state = 'active'",
            )
            .and_then(|mut s| {
                s.execute(params![id, expires_at.timestamp_millis(), renewed_at.timestamp_millis()])
            })
            .map_err(|e| failed(&format!("renew lease {id}"), e))?,
        Write::StartRevoking { .. } => conn
            .prepare_cached(
                "UPDATE leases SET state = 'revoking' \
                 WHERE id = ?1 AND state IN ('pending', 'active', 'irrevocable')",
            )
            .and_then(|mut s| s.execute([id]))
            .map_err(|e| failed(&format!("start revoking lease {id}"), e))?,
        Write::RevokeFailed { attempts, last_error, irrevocable, .. } => conn
            .prepare_cached(
                "UPDATE leases SET attempts = ?2, last_error = ?3, \
                 state = CASE WHEN ?4 THEN 'irrevocable' ELSE state END \
                 WHERE id = ?1 AND state IN ('revoking', 'irrevocable')",
            )
            .and_then(|mut s| s.execute(params![id, attempts, last_error, irrevocable]))
            .map_err(|e| failed(&format!("record failed revocation of lease {id}"), e))?,
        Write::Revoked { at, .. } => conn
            .prepare_cached(
                "UPDATE leases SET state = 'revoked', revoked_at = ?2 WHERE id = ?1 AND state != 'revoked'",
            )
            .and_then(|mut s| s.execute(params![id, at.timestamp_millis()]))
            .map_err(|e| failed(&format!("mark lease {id} revoked"), e))?,
        Write::Reopen { .. } => conn
            .prepare_cached(
                "UPDATE leases SET state = 'revoking', revoked_at = NULL WHERE id = ?1 AND state != 'active'",
            )
            .and_then(|mut s| s.execute([id]))
            .map_err(|e| failed(&format!("reopen lease {id}"), e))?,
        Write::Delete { .. } => conn
            .prepare_cached("DELETE FROM leases WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(|e| failed(&format!("delete lease {id}"), e))?,
    };
    Ok(changed as u64)
}

/// Inserts `lease` unless its id exists; rows inserted.
fn insert(conn: &Connection, lease: &Lease) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, max_expires_at, \
         renewable, attempts, last_error, owner_uid, owner_gid, owner_pid, plugin_data, revoked_at, \
         owner_policy, idempotency, owner_unit) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19) \
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        lease.id.as_str(),
        lease.role,
        lease.connection,
        lease.username,
        lease.state.as_str(),
        lease.issued_at.timestamp_millis(),
        lease.expires_at.timestamp_millis(),
        lease.max_expires_at.timestamp_millis(),
        lease.renewable,
        lease.attempts,
        lease.last_error,
        lease.owner.uid,
        lease.owner.gid,
        lease.owner.pid,
        json_text(lease.plugin_data.as_ref())?,
        lease.revoked_at.map(|t| t.timestamp_millis()),
        lease.owner.policy,
        lease.idempotency,
        lease.owner.unit,
    ])
}

fn json_text(value: Option<&serde_json::Value>) -> rusqlite::Result<Option<String>> {
    value
        .map(|v| serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into())))
        .transpose()
}
