//! Start-up recovery: every lease the store says still needs work goes
//! back into the expiry indexes before the daemon reports ready.

use std::sync::atomic::Ordering;

use chrono::Utc;
use tracing::info;

use super::Broker;
use crate::expiry::{self, ANY_ATTEMPT};
use crate::lease::LeaseState;
use crate::store::{ScanFrom, StoreError};

/// Leases read from the store per page of the start-up scan.
const RECOVERY_PAGE: usize = 10_000;

impl Broker {
    /// Feeds every unfinished lease of this node from the store to the
    /// indexes (another node's are that node's work while it lives, and
    /// the sweep's once it is dead: see [`crate::store::cluster`]): pending
    /// leases are rolled back, active ones wait for their expiry, revoking
    /// ones are retried now, and irrevocable ones go back to their slow
    /// cadence, spread over it rather than all retried at once. The store
    /// is read a page at a time and the indexes built once at the end, so
    /// a million leases take neither a million full records in memory nor
    /// a million single inserts.
    pub(crate) async fn recover(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let (mut pending, mut active, mut retry) = (0u64, 0u64, 0u64);
        let mut due = self.index.loader();
        let mut warnings = self.warnings.loader();
        let me = self.store.cluster().map(|c| c.node());
        let grace = chrono::Duration::from_std(crate::store::cluster::TAKEOVER_GRACE).unwrap_or_default();
        // The next page is read while this one is sorted into the loaders.
        let read = |from: ScanFrom| {
            let store = self.store.clone();
            tokio::spawn(async move { store.unfinished(from, RECOVERY_PAGE).await })
        };
        let mut reading = Some(read(ScanFrom::default()));
        while let Some(page) = reading.take() {
            let (page, next) = page
                .await
                .map_err(|e| StoreError::Io(format!("the start-up scan's read task failed: {e}")))??;
            reading = next.map(read);
            for lease in page {
                if lease.node.as_deref().is_some_and(|node| Some(node) != me) {
                    // Another node's: it does the work while alive; this one
                    // sweeps for it a grace after it falls due.
                    if lease.state == LeaseState::Active {
                        self.foreign.schedule(&lease.id, lease.expires_at + grace, ANY_ATTEMPT);
                    }
                    continue;
                }
                let at = match lease.state {
                    LeaseState::Active => {
                        active += 1;
                        let warn_at = expiry::warning_at(lease.issued_at, lease.expires_at);
                        warnings.push(&lease.id, warn_at, lease.expires_at.timestamp_millis());
                        lease.expires_at
                    }
                    // Being issued by this process: its issuance settles it,
                    // whatever happens. (If it ended between the scan's read
                    // and this check, the lease is settled already, and an
                    // extra attempt on it is harmless: revocation re-reads.)
                    LeaseState::Pending if self.issuing.lock().unwrap().contains(&lease.id) => continue,
                    LeaseState::Pending => {
                        pending += 1;
                        now
                    }
                    LeaseState::Revoking => {
                        retry += 1;
                        now
                    }
                    LeaseState::Irrevocable => {
                        retry += 1;
                        expiry::slow_retry_after_restart(now, self.irrevocable_retry)
                    }
                    LeaseState::Revoked => continue,
                };
                due.push(&lease.id, at, lease.attempts);
            }
        }
        // Counted once the whole scan succeeded: a failed one is run again.
        crate::metrics::rolled_back(pending);
        tokio::join!(due.finish(), warnings.finish());
        self.ready.store(true, Ordering::Release);
        self.became_ready.notify_waiters();
        let ms = (Utc::now() - now).num_milliseconds();
        info!(pending, active, retry, ms, "start-up recovery done; ready");
        Ok(())
    }
}
