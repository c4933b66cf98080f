//! The revocation side of the broker: one revocation attempt with its
//! bookkeeping (backoff, `irrevocable`, the re-check of rollbacks whose
//! issuance timed out), the loop that hands due leases to it, and the purge
//! of old revoked leases.
//!
//! These are methods of [`Broker`] kept apart from issuance: the broker
//! decides *whether* a lease is revoked; this module is *how* that work is
//! scheduled and retried.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Broker, BrokerError, Revocation};
use crate::audit::{Actor, Record};
use crate::events::Event;
use crate::expiry;
use crate::expiry::bounded;
use crate::expiry::{Due, ExpiryIndex, ANY_ATTEMPT, MAX_FAST_ATTEMPTS};
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::metrics;
use crate::store::{Claim, Write};

/// Expiry revocations under way at once. A mass expiry (say a restart
/// after a long outage, every lease due) would otherwise be a task per
/// lease at once, each waiting in every queue (the lease locks, the store's
/// writer, the batches) ahead of the issuances arriving meanwhile: with
/// 100 000 leases due, issuances waited up to 2.5 s. Each revocation holds
/// its place for its claim, its batch and its store write, several round
/// trips on a shared store, so the bound must cover those as well as full
/// batches (`expiry::batch::MAX_BATCH`) on every worker: at 2048 the
/// PostgreSQL store's drain ran at 0.7 of this.
const EXPIRIES_IN_FLIGHT: usize = 8192;
/// Of those, how many start while this node is issuing: issuance comes
/// first. An expiry's revocation is cheap enough that 8192 of them in
/// flight take both cores of a small machine, and issuances woken behind a
/// thousand revocations waited for them (a p99 of 0.3-0.9 s while 100 000
/// expired leases drained; 62-99 ms with this bound). With nobody issuing,
/// the drain runs at full width.
const EXPIRIES_BESIDE_ISSUANCE: usize = 256;
/// How long the expiry loop waits for one of those. Revocations that hold
/// them longer wait on a backend (a slow or hung one), not on the cores:
/// the narrowing is then off for [`NARROW_PAUSE`], so a hung backend does
/// not hold back the expiries of the others.
const NARROW_WAIT: StdDuration = StdDuration::from_millis(100);
const NARROW_PAUSE: StdDuration = StdDuration::from_secs(1);

impl Broker {
    /// One revocation attempt under the lease's lock and its connection's
    /// worker pool. A failure is recorded and retried later with backoff;
    /// any other way out before an outcome is recorded (a store error, the
    /// caller going away) puts the lease back in the schedule, so no lease
    /// is ever forgotten.
    ///
    /// `due` is the index entry that fell due, for an expiry or a retry;
    /// `None` for a revocation asked for now.
    pub(crate) async fn revoke_now(
        &self,
        id: &LeaseId,
        due: Option<&Due>,
    ) -> Result<Revocation, BrokerError> {
        let expired = due.is_some();
        // A shared lease ends for every holder; taken before the lease's
        // lock, which the shared leases' upkeep takes under theirs.
        self.forget_shared(id).await;
        let _lock = self.locks.lock(id).await;
        let mut retry = Reschedule { index: &self.index, id, armed: true };
        // A revocation asked for now is marked `revoking` in its claim
        // where the store can; an expiry is not marked at all (below).
        let (claim, marked) = match due {
            Some(_) => (self.store.claim(id).await?, false),
            None => self.store.claim_to_revoke(id).await?,
        };
        let lease = match claim {
            Claim::Granted(lease) => lease,
            Claim::Missing => {
                retry.armed = false;
                return Ok(Revocation::AlreadyRevoked);
            }
            // Another node works on it: look again when its claim ends
            // (it finished, or it died and the claim lapsed).
            Claim::Held { by, until } => {
                retry.armed = false;
                let at = until.max(Utc::now() + chrono::Duration::milliseconds(100));
                self.index.schedule(id, at, ANY_ATTEMPT);
                return Ok(Revocation::Busy { node: by });
            }
        };
        let mut claim = Claimed { broker: self, id, held: true };
        // An active lease's one entry is at its expiry (gone already when
        // the expiry loop popped it). Other entries (a retry scheduled
        // before this attempt) stay and find the lease settled when due;
        // so does the expiring warning, which re-reads the lease.
        if lease.state == LeaseState::Active {
            self.index.unschedule(id, lease.expires_at, lease.attempts);
        }
        if lease.state == LeaseState::Revoked {
            retry.armed = false;
            claim.held = false;
            return Ok(Revocation::AlreadyRevoked);
        }
        if due.is_some_and(|due| !due.is_current(lease.attempts))
            && matches!(lease.state, LeaseState::Revoking | LeaseState::Irrevocable)
        {
            // A retry left over from before a later attempt, which
            // scheduled its own: one chain of retries per lease.
            retry.armed = false;
            claim.release().await;
            return Ok(Revocation::NotDue);
        }
        if expired && lease.state == LeaseState::Active && lease.expires_at > Utc::now() {
            // Renewed while this attempt waited for the lock (or on
            // another node): not due yet.
            retry.armed = false;
            claim.release().await;
            self.schedule_expiry(id, lease.expires_at, lease.attempts);
            return Ok(Revocation::NotDue);
        }
        // An active lease whose expiry has come is revoked without first
        // being marked `revoking`: should this node die before recording
        // the outcome, the lease is still expired and is revoked again at
        // start-up (or by another node), and dropping a credential twice is
        // harmless; so the mark would be a durable write that protects
        // nothing. A revocation asked for before the expiry (or a rollback)
        // is marked first, so that it is resumed after a crash rather than
        // left until the expiry.
        let expiring = expired && lease.state == LeaseState::Active;
        let mut in_revoking = marked || !matches!(lease.state, LeaseState::Pending | LeaseState::Active);
        if !in_revoking && !expiring && !self.store.write(Write::StartRevoking { id: id.clone() }).await? {
            // The claim was lost meanwhile (this node was out of touch for
            // longer than the node timeout): another node has the lease.
            // The retry armed above looks again later.
            claim.held = false;
            return Ok(Revocation::NotDue);
        }
        in_revoking |= !expiring;
        metrics::revocation_attempt(&lease.connection);
        let result = match self.backend(&lease) {
            Ok(backend) if backend.connection.plugin.revokes_in_batches() => {
                let settings = self.lease_ref(&lease).settings.cloned();
                backend.batcher.revoke(lease.clone(), settings).await.map(|()| backend.operation_timeout)
            }
            Ok(backend) => {
                let _permit = backend.revocations.acquire().await.expect("semaphore never closed");
                bounded(backend.operation_timeout, backend.connection.plugin.revoke(&self.lease_ref(&lease)))
                    .await
                    .map(|()| backend.operation_timeout)
            }
            Err(BrokerError::Backend { source, .. }) => Err(source),
            Err(e) => return Err(e),
        };
        match result {
            Ok(grace) if self.settle(id) => {
                // The issuance's outcome was unknown (it timed out): a
                // statement the server had already taken could still commit
                // after this drop found nothing. Look once more, later.
                retry.armed = false;
                // The claim stays (it lapses after two minutes, or when this
                // node dies): no other node takes the lease before the look.
                claim.held = false;
                self.rechecking.lock().unwrap().insert(id.clone());
                let at =
                    Utc::now() + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::seconds(30));
                self.index.schedule(id, at, lease.attempts);
                info!(lease = %id, username = %lease.username, recheck_in_ms = grace.as_millis() as u64, "rolled back; checking the backend once more later");
                Ok(Revocation::Revoked)
            }
            Ok(_) => {
                let now = Utc::now();
                let recorded = self.store.write(Write::Revoked { id: id.clone(), at: now }).await?;
                retry.armed = false;
                claim.held = false;
                if !recorded {
                    // Fenced: another node took the lease over while this
                    // one was out of touch, and records the outcome itself.
                    // (Dropping a credential twice is harmless.)
                    debug!(lease = %id, "revoked, but another node had taken the lease over; it records the outcome");
                    return Ok(Revocation::AlreadyRevoked);
                }
                self.give_back_quota(&lease);
                // A reopened lease was counted when another node rolled it back.
                if !self.reopened.lock().unwrap().remove(id) {
                    metrics::revoked(&lease.connection);
                }
                // Rollbacks of failed issuances (and their second look) are
                // neither expiries nor credentials anyone held.
                let rollback =
                    lease.state == LeaseState::Pending || self.rechecking.lock().unwrap().remove(id);
                if expired && !rollback {
                    metrics::revocation_lateness((now - lease.expires_at).to_std().unwrap_or_default());
                }
                debug!(lease = %id, username = %lease.username, "revoked");
                if expired || rollback {
                    let action = if rollback { "lease.rollback" } else { "lease.expire" };
                    self.audit.record_background(
                        Record::new(action, Actor::daemon()).lease(id.as_str()).target(&lease.role),
                    );
                }
                if !rollback {
                    let revoked = Lease { state: LeaseState::Revoked, revoked_at: Some(now), ..lease };
                    self.events.emit(Event::LeaseRevoked(Box::new(revoked)));
                }
                Ok(Revocation::Revoked)
            }
            Err(source) => {
                let attempts = lease.attempts + 1;
                let irrevocable = attempts >= MAX_FAST_ATTEMPTS;
                metrics::revoke_failed(&lease.connection);
                let wait = expiry::backoff(attempts, self.irrevocable_retry);
                let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
                // A failure is recorded on a `revoking` lease: an expiry
                // that skipped the mark makes it now.
                if !in_revoking && !self.store.write(Write::StartRevoking { id: id.clone() }).await? {
                    // Fenced: another node has the lease (see above).
                    claim.held = false;
                    return Ok(Revocation::NotDue);
                }
                let write = Write::RevokeFailed {
                    id: id.clone(),
                    attempts,
                    last_error: source.to_string(),
                    irrevocable,
                    retry_at: at,
                };
                self.store.write(write).await?;
                retry.armed = false;
                claim.held = false;
                // Counted once the store says so: a failed write leaves the
                // lease as it was, and the next attempt counts it then.
                if irrevocable && lease.state != LeaseState::Irrevocable {
                    metrics::flagged_irrevocable(&lease.connection);
                }
                if expired {
                    let record = Record::new("lease.expire", Actor::daemon()).lease(id.as_str());
                    self.audit.record_background(record.failed("backend_failed", source.to_string()));
                }
                warn!(lease = %id, attempts, irrevocable, retry_in_s = wait.as_secs(), error = %source, "revocation failed");
                self.index.schedule(id, at, attempts);
                Err(BrokerError::Backend { context: format!("revoking lease {id} (will retry)"), source })
            }
        }
    }

    /// Sleeps until the earliest deadline, then hands every due lease to a
    /// revocation task, at most [`EXPIRIES_IN_FLIGHT`] at a time. Runs
    /// until shutdown.
    pub(crate) async fn expiry_loop(self: Arc<Self>) {
        let in_flight = Arc::new(Semaphore::new(EXPIRIES_IN_FLIGHT));
        let beside_issuance = Arc::new(Semaphore::new(EXPIRIES_BESIDE_ISSUANCE));
        let mut narrow_off_until = tokio::time::Instant::now();
        loop {
            let due = self.index.due(Utc::now(), 1024);
            let more = due.len() == 1024;
            for due in due {
                let narrow = tokio::time::Instant::now() >= narrow_off_until
                    && !self.issuing.lock().unwrap().is_empty();
                let (permit, narrowed) = tokio::select! {
                    permits = async {
                        let narrowed = match narrow {
                            true => tokio::time::timeout(NARROW_WAIT, beside_issuance.clone().acquire_owned())
                                .await
                                .ok()
                                .map(|permit| permit.expect("semaphore never closed")),
                            false => None,
                        };
                        (in_flight.clone().acquire_owned().await.expect("semaphore never closed"), narrowed)
                    } => permits,
                    // What was taken from the index is in the store, and
                    // the next start's recovery schedules it again.
                    _ = self.shutdown.cancelled() => return,
                };
                if narrow && narrowed.is_none() {
                    narrow_off_until = tokio::time::Instant::now() + NARROW_PAUSE;
                }
                let me = self.clone();
                self.tasks.spawn(async move {
                    // Failures are recorded and rescheduled inside.
                    let _ = me.revoke_now(&due.id, Some(&due)).await;
                    drop((permit, narrowed));
                });
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let sleep = match self.index.next_deadline() {
                Some(at) => tokio::time::sleep_until(expiry::instant_of(at)),
                None => tokio::time::sleep(StdDuration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.index.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Publishes `lease_expiring` for every active lease reaching two
    /// thirds of its TTL. Runs until shutdown.
    pub(crate) async fn expiring_loop(self: Arc<Self>) {
        loop {
            for (id, expires_at_ms) in self.warnings.pop_due(Utc::now(), 1024) {
                match self.store.get(&id).await {
                    // Still active, unexpired, and not renewed since this
                    // warning was scheduled (a renewal schedules its own).
                    Ok(Some(lease))
                        if lease.state == LeaseState::Active
                            && lease.expires_at > Utc::now()
                            && lease.expires_at.timestamp_millis() == expires_at_ms =>
                    {
                        self.events.emit(Event::LeaseExpiring(Box::new(lease)));
                    }
                    Ok(_) => {}
                    Err(e) => debug!(lease = %id, error = %e, "cannot read a lease for its expiring event"),
                }
            }
            let sleep = match self.warnings.next_deadline() {
                Some(at) => tokio::time::sleep_until(expiry::instant_of(at)),
                None => tokio::time::sleep(StdDuration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.warnings.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Purges revoked leases older than the retention, hourly.
    pub(crate) async fn purge_loop(self: Arc<Self>) {
        loop {
            let before = Utc::now() - self.revoked_retention.to_chrono();
            match self.store.purge_revoked(before).await {
                Ok(0) => {}
                Ok(n) => info!(purged = n, "purged revoked leases"),
                Err(e) => warn!(error = %e, "purging revoked leases failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(StdDuration::from_secs(3600)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// This node's claim on a lease while a revocation attempt holds it. A
/// way out that records no outcome (a store error, the caller going away)
/// gives it up, so other nodes need not wait for it to lapse; the outcome
/// writes end it themselves.
struct Claimed<'a> {
    broker: &'a Broker,
    id: &'a LeaseId,
    held: bool,
}

impl Claimed<'_> {
    async fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            if let Err(e) = self.broker.store.release(self.id).await {
                debug!(lease = %self.id, error = %e, "cannot release the claim; it lapses by itself");
            }
        }
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if self.held && self.broker.store.cluster().is_some() {
            let store = self.broker.store.clone();
            let id = self.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.release(&id).await {
                    debug!(lease = %id, error = %e, "cannot release the claim; it lapses by itself");
                }
            });
        }
    }
}

/// Puts a lease back in the schedule unless disarmed: the safety net of a
/// revocation attempt that ends before recording its outcome.
struct Reschedule<'a> {
    index: &'a ExpiryIndex,
    id: &'a LeaseId,
    armed: bool,
}

impl Drop for Reschedule<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The fourth fast retry's wait (about 4 s): never the slow one.
            let wait = expiry::backoff(3, std::time::Duration::MAX);
            let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(5));
            // Whatever attempt comes next, this entry is acted on.
            self.index.schedule(self.id, at, ANY_ATTEMPT);
        }
    }
}
