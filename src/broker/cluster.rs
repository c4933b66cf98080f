//! Several nodes on one store (DESIGN §8): each host runs its own daemon
//! (it serves local sockets), and they share leases through a PostgreSQL
//! store.
//!
//! - A node heartbeats; one whose heartbeat is older than
//!   `server.node_timeout` is dead.
//! - Work on a lease is claimed in the store ([`LeaseStore::claim`]): one
//!   node at a time revokes or renews it. A claim ends with the write that
//!   records the outcome, or when its holder dies.
//! - Each node revokes its own leases when they fall due, from its own
//!   expiry index. Every node also learns the other nodes' deadlines
//!   (`LISTEN/NOTIFY`) and, a grace after one passes, sweeps the store for
//!   due work nobody has claimed (`FOR UPDATE SKIP LOCKED`): a dead node's
//!   expired leases, its `pending` ones (rolled back), the retries it owed.
//!   A slow periodic sweep covers notifications lost while disconnected.
//! - Events other nodes' watchers need (a static account `rotated`) are
//!   published through the store. What arrives by `LISTEN` is a hint
//!   (anyone who may connect to the store may `NOTIFY`): an event is
//!   passed on only as the store's record confirms it, and a deadline only
//!   wakes a sweep that reads the store.
//!
//! This module is the broker's side of it (heartbeat, listener, sweep);
//! the store's side is the [`Cluster`] trait (`store/cluster.rs`), which
//! the PostgreSQL store implements.
//!
//! [`LeaseStore::claim`]: crate::store::LeaseStore::claim

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use lessor_client::Rotation;

use super::window::Load;
use super::Broker;
use crate::events::Event;
use crate::expiry::{self, Due, ANY_ATTEMPT};
use crate::lease::LeaseId;
use crate::store::cluster::{Cluster, Notice, TAKEOVER_GRACE};
use crate::store::{Span, StoreError};

/// Most leases one sweep claims.
const SWEEP_BATCH: usize = 256;

/// The least time between two sweeps, so a burst of other nodes'
/// deadlines costs one sweep, not one each.
const SWEEP_SPACING: StdDuration = StdDuration::from_millis(200);

impl Broker {
    /// Starts this node's part of the cluster: the heartbeat, the listener
    /// and the sweep. Nothing for a store of one node.
    pub(crate) fn start_cluster(self: &Arc<Self>) {
        if self.store.cluster().is_none() {
            return;
        }
        let me = self.clone();
        self.tasks.spawn(async move { me.heartbeat_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move { me.listen_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move { me.sweep_loop().await });
        let me = self.clone();
        let mut published = self.events.forward_to_cluster();
        self.tasks.spawn(async move {
            let Some(cluster) = me.store.cluster() else { return };
            loop {
                let event = tokio::select! {
                    event = published.recv() => match event { Some(e) => e, None => return },
                    _ = me.shutdown.cancelled() => return,
                };
                if let Err(e) = cluster.publish(&event).await {
                    warn!(error = %e, "cannot tell the other nodes of an event; their watchers miss it");
                }
            }
        });
    }

    fn cluster(&self) -> &dyn Cluster {
        self.store.cluster().expect("started only with a shared store")
    }

    /// Heartbeats every third of the node timeout. A node that could not
    /// for longer than the timeout says so when it can again: the others
    /// took its claims over meanwhile, and its writes are fenced (they
    /// apply only to leases it still holds or nobody holds).
    async fn heartbeat_loop(self: Arc<Self>) {
        let timeout = self.cluster().node_timeout();
        let every = timeout / 3;
        let mut last_ok = Instant::now();
        loop {
            match self.cluster().heartbeat().await {
                Ok(()) => {
                    let gap = last_ok.elapsed();
                    if gap > timeout {
                        warn!(
                            out_of_touch_s = gap.as_secs(),
                            node_timeout_s = timeout.as_secs(),
                            "this node's heartbeat was missing for longer than the node timeout: \
                             other nodes may have taken over its work"
                        );
                    }
                    last_ok = Instant::now();
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Follows the other nodes' deadlines and events. After a reconnection
    /// (notices may have been lost) the store is read again and a sweep is
    /// run at once.
    async fn listen_loop(self: Arc<Self>) {
        let me = self.cluster().node().to_string();
        let mut notices = self.cluster().listen(self.shutdown.clone());
        let grace = chrono::Duration::from_std(TAKEOVER_GRACE).unwrap_or_default();
        let mut first = true;
        while let Some(notice) = notices.recv().await {
            match notice {
                Notice::Connected => {
                    if !first {
                        info!("listening to the store again; reading the other nodes' leases");
                        if let Err(e) = self.rescan_foreign().await {
                            warn!(error = %e, "cannot read the other nodes' leases; the periodic sweep covers them");
                        }
                    }
                    first = false;
                    self.foreign.schedule(&LeaseId::from_store(String::new()), Utc::now(), ANY_ATTEMPT);
                }
                // Anyone who may connect to the store may NOTIFY: a
                // deadline is only a time to wake and sweep, and the sweep
                // claims only what the store's rows say is due. Nothing is
                // taken out of the index on a notice's word, so a forged one
                // cannot hide a real deadline (an entry left by a renewal
                // wakes a sweep that finds nothing, and is gone).
                // One beyond the expiry window is read in by a refill.
                Notice::Scheduled { id, node, expires_at, .. } if node != me => {
                    if self.horizon.covers(expires_at) {
                        self.foreign.schedule(&id, expires_at + grace, ANY_ATTEMPT);
                    }
                }
                Notice::Event { node, event } if node != me => self.forward_verified(event).await,
                _ => {}
            }
        }
    }

    /// Passes on to this node's watchers an event another node published,
    /// once the store confirms it: a `rotated` event is rebuilt from the
    /// account's record when that record is at the event's version and
    /// rotation time; anything else (nodes publish nothing else, and never
    /// an admin credential's rotation) is dropped.
    async fn forward_verified(&self, event: Event) {
        let Event::Rotated(Rotation { account, version, rotated_at, .. }) = event else {
            warn!("dropped an event from the store that nodes never publish (a forged NOTIFY?)");
            return;
        };
        let record = match self.store.static_get(&account).await {
            Ok(record) => record,
            Err(e) => {
                warn!(account, error = %e, "cannot check a rotation another node announced; its watchers here miss it");
                return;
            }
        };
        let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
        let confirmed = record.filter(|r| {
            !r.name.contains(':') && r.version == version && millis(r.rotated_at) == millis(rotated_at)
        });
        let Some(record) = confirmed else {
            warn!(
                account,
                version, "dropped a rotation event the store does not confirm (stale, or a forged NOTIFY)"
            );
            return;
        };
        self.events.emit_local(Event::Rotated(record.rotation()));
    }

    /// Puts the other nodes' deadlines that fall within the expiry window
    /// in the index of their deadlines again (a re-read after notices may
    /// have been lost; those already past are swept at once anyway).
    async fn rescan_foreign(&self) -> Result<(), StoreError> {
        let span = Span { after: Utc::now().timestamp_millis(), until: self.horizon.until() };
        self.load(span, Load::Foreign).await
    }

    /// Claims and revokes the due work nobody else does: woken by the other
    /// nodes' deadlines (a grace after each), and every half node timeout
    /// anyway, for dead nodes' `pending` leases and lost notifications.
    async fn sweep_loop(self: Arc<Self>) {
        let every = self.cluster().node_timeout() / 2;
        let mut periodic = tokio::time::Instant::now();
        loop {
            // Whatever fell due, one sweep serves it all.
            let woken = !self.foreign.due(Utc::now(), usize::MAX).is_empty();
            if !self.is_ready() {
                // Start-up recovery first: it schedules this node's own work.
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_SPACING) => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            if woken || tokio::time::Instant::now() >= periodic {
                periodic = tokio::time::Instant::now() + every;
                if self.sweep().await {
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_SPACING) => {}
                    _ = self.shutdown.cancelled() => return,
                }
            }
            let at = self.foreign.next_deadline().map_or(periodic, |w| expiry::instant_of(w).min(periodic));
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.foreign.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// One sweep: claims due work and revokes it. Whether the batch was
    /// full (there may be more).
    async fn sweep(self: &Arc<Self>) -> bool {
        let claimed = match self.cluster().claim_due(TAKEOVER_GRACE, SWEEP_BATCH).await {
            Ok(claimed) => claimed,
            Err(e) => {
                debug!(error = %e, "sweep failed; trying again later");
                return false;
            }
        };
        let full = claimed.len() == SWEEP_BATCH;
        if !claimed.is_empty() {
            info!(leases = claimed.len(), "took over due work no live node was doing");
        }
        for id in claimed {
            let me = self.clone();
            self.tasks.spawn(async move {
                let due = Due { id, attempts: ANY_ATTEMPT };
                // Failures are recorded and rescheduled inside.
                let _ = me.revoke_now(&due.id, Some(&due)).await;
            });
        }
        full
    }
}
