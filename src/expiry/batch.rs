//! Revocations gathered into batches per connection, for plugins that
//! revoke several users in one round trip (PostgreSQL: one `NOLOGIN`
//! transaction, one `pg_terminate_backend` over all of them, one
//! `DROP ROLE a, b, …`).
//!
//! Each revocation attempt keeps its own bookkeeping (lock, store writes,
//! backoff) in `worker`; only the plugin call goes through here. A
//! gatherer task takes what is queued, waits at most [`LINGER`] for more,
//! up to [`MAX_BATCH`], and runs the batch on one of the connection's
//! revocation workers, so a mass expiry or a `revoke -prefix` costs a few
//! round trips per hundred leases. When the batch fails as a whole, its
//! leases are revoked one by one on the same worker, each answered as soon
//! as its own outcome is known, so a failure is only ever its own lease's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor_plugin::{LeaseRef, Plugin, PluginError, RoleSettings};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::bounded;
use crate::lease::Lease;

/// The most leases one batch holds.
pub const MAX_BATCH: usize = 100;
/// How long a batch waits for more leases after its first.
pub const LINGER: Duration = Duration::from_millis(10);

/// One revocation waiting for its batch.
struct Job {
    lease: Lease,
    settings: Option<RoleSettings>,
    reply: oneshot::Sender<Result<(), PluginError>>,
}

impl Job {
    fn lease_ref(&self) -> LeaseRef<'_> {
        LeaseRef {
            lease_id: self.lease.id.as_str(),
            role: &self.lease.role,
            settings: self.settings.as_ref(),
            username: &self.lease.username,
            plugin_data: self.lease.plugin_data.as_ref(),
        }
    }
}

/// The batching revoker of one connection; its gatherer starts on first use
/// (and again, should it ever have stopped).
pub(crate) struct Batcher {
    plugin: Arc<dyn Plugin>,
    workers: Arc<Semaphore>,
    operation_timeout: Duration,
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("operation_timeout", &self.operation_timeout).finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(plugin: Arc<dyn Plugin>, workers: Arc<Semaphore>, operation_timeout: Duration) -> Self {
        Self { plugin, workers, operation_timeout, queue: Mutex::new(None) }
    }

    /// Revokes `lease` as part of the next batch.
    pub(crate) async fn revoke(
        &self,
        lease: Lease,
        settings: Option<RoleSettings>,
    ) -> Result<(), PluginError> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job { lease, settings, reply };
        {
            let mut queue = self.queue.lock().unwrap();
            let mut sent = false;
            for _ in 0..2 {
                let sender = queue.get_or_insert_with(|| self.start());
                match sender.send(job) {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    // The gatherer stopped: start another.
                    Err(mpsc::error::SendError(back)) => {
                        job = back;
                        *queue = None;
                    }
                }
            }
            if !sent {
                return Err(PluginError::Internal { message: "the revocation batcher cannot start".into() });
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(PluginError::Unavailable { message: "the revocation batch ended without an answer".into() })
        })
    }

    fn start(&self) -> mpsc::UnboundedSender<Job> {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        let plugin = self.plugin.clone();
        let workers = self.workers.clone();
        let timeout = self.operation_timeout;
        // Not a tracked task: it ends with the broker (its queue closes),
        // and the revocations waiting on it are the tracked ones.
        tokio::spawn(async move {
            while let Some(first) = jobs.recv().await {
                let mut batch = vec![first];
                let until = tokio::time::Instant::now() + LINGER;
                while batch.len() < MAX_BATCH {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => match tokio::time::timeout_at(until, jobs.recv()).await {
                            Ok(Some(job)) => batch.push(job),
                            _ => break,
                        },
                    }
                }
                let Ok(permit) = workers.clone().acquire_owned().await else { return };
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    run(plugin.as_ref(), batch, timeout).await;
                    drop(permit);
                });
            }
        });
        queue
    }
}

/// Runs one batch: all at once, or, when that fails, one by one, each
/// answered as soon as it is done.
async fn run(plugin: &dyn Plugin, mut batch: Vec<Job>, timeout: Duration) {
    // A caller that went away (its request timed out) has put its lease
    // back in the schedule; that later attempt does the work.
    batch.retain(|job| !job.reply.is_closed());
    if batch.len() >= 2 {
        let refs: Vec<LeaseRef<'_>> = batch.iter().map(Job::lease_ref).collect();
        let outcome = bounded(timeout, plugin.revoke_batch(&refs)).await;
        drop(refs);
        match outcome {
            Ok(()) => {
                for job in batch {
                    let _ = job.reply.send(Ok(()));
                }
                return;
            }
            Err(e) => debug!(leases = batch.len(), error = %e, "batched revocation failed; one by one"),
        }
    }
    for job in batch {
        if job.reply.is_closed() {
            continue;
        }
        let outcome = bounded(timeout, plugin.revoke(&job.lease_ref())).await;
        let _ = job.reply.send(outcome);
    }
}
