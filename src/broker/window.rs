//! The expiry window (DESIGN §8): the indexes hold only the deadlines
//! that fall within `server.expiry_window`, read from the store at start-up
//! and again every half window, so a node's memory and start-up time follow
//! how many leases fall due soon, not how many there are.
//!
//! - Start-up ([`Broker::recover`]) reads this node's leases still
//!   settling (pending ones are rolled back, revoking ones retried now,
//!   irrevocable ones spread over their slow cadence), then every active
//!   lease that expires by the horizon (this node's into the expiry index
//!   with their warnings; the other nodes' into the index of their
//!   deadlines), then this node's warnings that fall by it.
//! - A refill ([`Broker::window_loop`]) moves the horizon half a window on
//!   and reads what falls in the stretch it added. It moves the horizon
//!   before reading, and an issuance or renewal checks it after its write,
//!   so no lease falls between the two (see [`Horizon`]).
//!
//! [`Horizon`]: crate::expiry::Horizon

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::Broker;
use crate::expiry::{self, Horizon, ANY_ATTEMPT};
use crate::lease::{LeaseId, LeaseState};
use crate::store::cluster::TAKEOVER_GRACE;
use crate::store::{Span, StoreError, Unfinished};

/// Leases read from the store per page.
const PAGE: usize = 10_000;

/// Whose deadlines a read of the window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// This node's and the others'.
    All,
    /// The other nodes' only (a re-read after notices were lost).
    Foreign,
}

impl Broker {
    /// Schedules an active lease's expiry if it falls within the window
    /// (a refill reads it in otherwise).
    pub(crate) fn schedule_expiry(&self, id: &LeaseId, expires_at: DateTime<Utc>, attempts: u32) {
        if self.horizon.covers(expires_at) {
            self.index.schedule(id, expires_at, attempts);
        }
    }

    /// Schedules a lease's `lease_expiring` warning if it falls within the
    /// window (a refill reads it in otherwise).
    pub(crate) fn schedule_warning(&self, id: &LeaseId, at: DateTime<Utc>, expires_at: DateTime<Utc>) {
        if self.horizon.covers(at) {
            self.warnings.insert(id, at, expires_at.timestamp_millis());
        }
    }

    fn is_mine(&self, lease: &Unfinished) -> bool {
        let me = self.store.cluster().map(|c| c.node());
        lease.node.as_deref().is_none_or(|node| Some(node) == me)
    }

    /// Feeds the indexes from the store before the daemon reports ready:
    /// every lease of this node still settling, and every deadline within
    /// the window. The indexes are built once at the end (full B-tree
    /// nodes, not one insert at a time).
    pub(crate) async fn recover(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let until = (now + self.window_chrono()).timestamp_millis();
        self.horizon.set(until);
        let (mut pending, mut active, mut retry) = (0u64, 0u64, 0u64);
        let mut due = self.index.loader();
        let mut warnings = self.warnings.loader();
        let grace = chrono::Duration::from_std(TAKEOVER_GRACE).unwrap_or_default();

        let mut after: Option<LeaseId> = None;
        loop {
            let page = self.store.settling(after.as_ref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|lease| lease.id.clone());
            for lease in page {
                let at = match lease.state {
                    // Being issued by this process: its issuance settles it,
                    // whatever happens. (If it ended between the read and
                    // this check, the lease is settled already, and an extra
                    // attempt on it is harmless: revocation re-reads.)
                    LeaseState::Pending if self.issuing.lock().unwrap().contains(&lease.id) => continue,
                    // A crashed run's: rolled back now. Its last statements
                    // may still be running on the backend (the server
                    // finishes what it was sent after the client died), so
                    // a drop now could find nothing that commits just
                    // after: look once more, as for a timed-out issuance.
                    LeaseState::Pending => {
                        pending += 1;
                        self.unsettled.lock().unwrap().insert(lease.id.clone());
                        now
                    }
                    LeaseState::Irrevocable => {
                        retry += 1;
                        expiry::slow_retry_after_restart(now, self.irrevocable_retry)
                    }
                    _ => {
                        retry += 1;
                        now
                    }
                };
                due.push(&lease.id, at, lease.attempts);
            }
            if !full {
                break;
            }
        }

        self.read_span(Span { after: i64::MIN, until }, false, |lease| {
            if self.is_mine(&lease) {
                active += 1;
                due.push(&lease.id, lease.expires_at, lease.attempts);
                warnings.push(&lease.id, warning_of(&lease), lease.expires_at.timestamp_millis());
            } else if lease.expires_at + grace > now {
                // Another node's: it does the work while alive; this one
                // sweeps for it a grace after it falls due (one already
                // past is swept at once after start-up anyway).
                self.foreign.schedule(&lease.id, lease.expires_at + grace, ANY_ATTEMPT);
            }
        })
        .await?;
        // Warnings that fall within the window for leases expiring after it.
        let span = Span { after: now.timestamp_millis(), until };
        self.read_warnings(span, |id, at, expires_ms| warnings.push(id, at, expires_ms)).await?;

        // Counted once the whole scan succeeded: a failed one is run again.
        crate::metrics::rolled_back(pending);
        tokio::join!(due.finish(), warnings.finish());
        self.ready.store(true, Ordering::Release);
        self.became_ready.notify_waiters();
        let ms = (Utc::now() - now).num_milliseconds();
        info!(pending, active, retry, ms, window_s = self.window.as_secs(), "start-up recovery done; ready");
        Ok(())
    }

    /// Moves the horizon on every half window and reads in what falls in
    /// the stretch it added. Runs until shutdown.
    pub(crate) async fn window_loop(self: Arc<Self>) {
        tokio::select! {
            _ = self.wait_ready() => {}
            _ = self.shutdown.cancelled() => return,
        }
        let mut failures = 0;
        loop {
            let next = DateTime::from_timestamp_millis(self.horizon.until())
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
                - self.window_chrono() / 2;
            let wait = if failures == 0 {
                tokio::time::sleep_until(expiry::instant_of(next))
            } else {
                tokio::time::sleep(expiry::backoff(failures.min(expiry::MAX_FAST_ATTEMPTS - 1), self.window))
            };
            tokio::select! {
                _ = wait => {}
                _ = self.shutdown.cancelled() => return,
            }
            let until = (Utc::now() + self.window_chrono()).timestamp_millis();
            let after = self.horizon.set(until);
            match self.load(Span { after, until }, Load::All).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Back to where the indexes are known complete: what
                    // was scheduled meanwhile stays, and the next try
                    // reads the whole stretch again.
                    self.horizon.set(after);
                    failures += 1;
                    warn!(error = %e, "cannot read the leases falling due soon from the store; trying again");
                }
            }
        }
    }

    /// Reads the deadlines in `span` into the indexes: expiries (and, for
    /// [`Load::All`], this node's warnings).
    pub(crate) async fn load(&self, span: Span, which: Load) -> Result<(), StoreError> {
        let grace = chrono::Duration::from_std(TAKEOVER_GRACE).unwrap_or_default();
        self.read_span(span, false, |lease| {
            if !self.is_mine(&lease) {
                self.foreign.schedule(&lease.id, lease.expires_at + grace, ANY_ATTEMPT);
            } else if which == Load::All {
                self.index.schedule(&lease.id, lease.expires_at, lease.attempts);
            }
        })
        .await?;
        if which == Load::All {
            self.read_warnings(span, |id, at, expires_ms| self.warnings.insert(id, at, expires_ms)).await?;
        }
        Ok(())
    }

    /// Pages through this node's warnings that fall in `span`, each with
    /// its instant and the expiry (epoch ms) it is about. The store rounds
    /// warnings down: it is read a millisecond early, and the span picked
    /// as the warning index keeps them.
    async fn read_warnings(
        &self,
        span: Span,
        mut each: impl FnMut(&LeaseId, DateTime<Utc>, i64),
    ) -> Result<(), StoreError> {
        let early = Span { after: span.after.saturating_sub(1), until: span.until };
        self.read_span(early, true, |lease| {
            let warn_at = warning_of(&lease);
            if Horizon::warning_in(warn_at, span.after, span.until) {
                each(&lease.id, warn_at, lease.expires_at.timestamp_millis());
            }
        })
        .await
    }

    /// Pages through the active leases expiring in `span` (this node's
    /// warnings in it when `warned`).
    async fn read_span(
        &self,
        span: Span,
        warned: bool,
        mut each: impl FnMut(Unfinished),
    ) -> Result<(), StoreError> {
        let mut from = None;
        loop {
            let (page, next) = if warned {
                self.store.warned(span, from.as_ref(), PAGE).await?
            } else {
                self.store.expiring(span, from.as_ref(), PAGE).await?
            };
            page.into_iter().for_each(&mut each);
            match next {
                Some(next) => from = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn window_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX)
    }
}

/// When a lease's `lease_expiring` warning falls: two thirds into its term
/// (from its last renewal, or its issue), as its issuance or renewal
/// scheduled it.
fn warning_of(lease: &Unfinished) -> DateTime<Utc> {
    expiry::warning_at(lease.renewed_at.unwrap_or(lease.issued_at), lease.expires_at)
}
