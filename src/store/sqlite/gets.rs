//! Point reads of one lease, gathered: each [`get`](super::SqliteStore)
//! queues its id, and one blocking task reads everything queued in one
//! read transaction, then answers each caller, until the queue is empty.
//!
//! A mass expiry claims every due lease, and on this store a claim is a
//! read: one `spawn_blocking` per lease (a thread woken, a read
//! transaction begun and ended) cost a drain about a fifth of its CPU. A
//! read alone still costs one blocking task, as before. Each read is
//! queued before its batch's transaction begins, so it sees every write
//! committed before it was asked for.

use std::mem;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::OptionalExtension;
use tokio::sync::oneshot;

use super::{lease_from_row, Readers};
use crate::lease::Lease;
use crate::store::StoreError;

/// The most reads one transaction serves; the rest wait for the next.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Option<Lease>, StoreError>>;

/// The queue of point reads and whether a task is draining it.
#[derive(Default)]
pub(super) struct Gets {
    state: Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    waiting: Vec<(String, Reply)>,
    draining: bool,
}

impl Gets {
    /// Reads lease `id` with the next batch.
    pub(super) async fn get(
        self: &Arc<Self>,
        readers: &Arc<Readers>,
        id: &str,
    ) -> Result<Option<Lease>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.push((id.to_owned(), reply));
            !mem::replace(&mut state.draining, true)
        };
        if start {
            let (gets, readers) = (Arc::clone(self), Arc::clone(readers));
            tokio::task::spawn_blocking(move || gets.drain(&readers));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Io(format!("{}: the read was dropped", readers.path.display())))
        })
    }

    /// Serves batches until the queue is empty. Blocks.
    fn drain(&self, readers: &Readers) {
        // Should a read panic, every caller waiting hears that its read
        // was dropped, and the next `get` starts a drain of its own.
        let _done = Done(self);
        loop {
            let batch = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.waiting.is_empty() {
                    state.draining = false;
                    return;
                }
                let take = state.waiting.len().min(MAX_BATCH);
                let rest = state.waiting.split_off(take);
                mem::replace(&mut state.waiting, rest)
            };
            let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
            match readers.run(|conn| read_all(conn, &ids)) {
                Ok(leases) => {
                    for ((_, reply), lease) in batch.into_iter().zip(leases) {
                        let lease =
                            lease.map_err(|e| StoreError::Io(format!("{}: {e}", readers.path.display())));
                        let _ = reply.send(lease);
                    }
                }
                Err(e) => {
                    let message = match e {
                        StoreError::Io(message) => message,
                        other => other.to_string(),
                    };
                    for (_, reply) in batch {
                        let _ = reply.send(Err(StoreError::Io(message.clone())));
                    }
                }
            }
        }
    }
}

/// One lease's read: a row that cannot be read fails only its own.
type Read = rusqlite::Result<Option<Lease>>;

/// Each lease of `ids`, in order, read in one transaction.
fn read_all(conn: &rusqlite::Connection, ids: &[&str]) -> rusqlite::Result<Vec<Read>> {
    let tx = conn.unchecked_transaction()?;
    let mut statement = tx.prepare_cached(select_leases!("WHERE id = ?1"))?;
    let leases = ids.iter().map(|id| statement.query_row([id], lease_from_row).optional()).collect();
    drop(statement);
    tx.finish()?;
    Ok(leases)
}

/// When a drain panics: drops every read still queued (its caller hears
/// that it was dropped, rather than waiting for a drain that is gone) and
/// marks the queue as no longer drained.
struct Done<'a>(&'a Gets);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        // A drain that returned has already said so, under the lock.
        if std::thread::panicking() {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.clear();
            state.draining = false;
        }
    }
}
