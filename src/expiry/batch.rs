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
//! round trips per hundred leases, and a lone due lease waits no more than
//! the linger.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lessor_plugin::{Plugin, PluginError, RoleSettings};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::broker::bounded;
use crate::lease::Lease;

/// The most leases one batch holds.
pub const MAX_BATCH: usize = 100;
/// How long a batch waits for more leases after its first.
pub const LINGER: Duration = Duration::from_millis(5);

/// One revocation waiting for its batch.
struct Job {
    lease: Lease,
    settings: Option<RoleSettings>,
    reply: oneshot::Sender<Result<(), PluginError>>,
}

/// The batching revoker of one connection; its gatherer starts on first use.
pub(crate) struct Batcher {
    plugin: Arc<dyn Plugin>,
    workers: Arc<Semaphore>,
    operation_timeout: Duration,
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("operation_timeout", &self.operation_timeout).finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(plugin: Arc<dyn Plugin>, workers: Arc<Semaphore>, operation_timeout: Duration) -> Self {
        Self { plugin, workers, operation_timeout, queue: OnceLock::new() }
    }

    /// Revokes `lease` as part of the next batch.
    pub(crate) async fn revoke(
        &self,
        lease: Lease,
        settings: Option<RoleSettings>,
    ) -> Result<(), PluginError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.get_or_init(|| self.start());
        if queue.send(Job { lease, settings, reply }).is_err() {
            return Err(PluginError::Internal { message: "the revocation batcher has stopped".into() });
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
        // and revocations waiting on it are the tracked ones.
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
                let permit = workers.clone().acquire_owned().await.expect("semaphore never closed");
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

/// Runs one batch and answers each revocation with its own result.
async fn run(plugin: &dyn Plugin, batch: Vec<Job>, timeout: Duration) {
    let refs: Vec<lessor_plugin::LeaseRef<'_>> = batch
        .iter()
        .map(|job| lessor_plugin::LeaseRef {
            lease_id: job.lease.id.as_str(),
            role: &job.lease.role,
            settings: job.settings.as_ref(),
            username: &job.lease.username,
            plugin_data: job.lease.plugin_data.as_ref(),
        })
        .collect();
    // The plugin bounds each statement itself; a batch that falls back to
    // one by one may take one operation's time per lease.
    let limit = timeout.saturating_mul(u32::try_from(refs.len()).unwrap_or(u32::MAX));
    let results: Vec<Option<Result<(), PluginError>>> =
        match bounded(limit, async { Ok(plugin.revoke_batch(&refs).await) }).await {
            Ok(results) if results.len() == refs.len() => results.into_iter().map(Some).collect(),
            Ok(_) => (0..refs.len()).map(|_| None).collect(),
            Err(e) => {
                let message = e.to_string();
                (0..refs.len())
                    .map(|_| Some(Err(PluginError::Unavailable { message: message.clone() })))
                    .collect()
            }
        };
    drop(refs);
    for (job, result) in batch.into_iter().zip(results) {
        let result = result.unwrap_or_else(|| {
            Err(PluginError::Internal {
                message: "the plugin answered a batch with the wrong number of results".into(),
            })
        });
        let _ = job.reply.send(result);
    }
}
