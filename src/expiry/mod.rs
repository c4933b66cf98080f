//! When leases fall due: a time-ordered index of every lease that needs
//! work at some instant (an active lease at its expiry, a failed
//! revocation at its next retry), the backoff that spaces retries, and
//! (in `worker`) the revocation attempts and the loop that runs them, and
//! (in `batch`) the gathering of due revocations into batches.
//!
//! The index has the shape of mini-redis's expiry map: a
//! `BTreeMap<(deadline, seq), id>` for "what is next", a `HashMap` from id
//! to key so a renewal can move a lease, and a [`Notify`] that wakes the
//! one task sleeping until the earliest deadline when an earlier one
//! arrives. A std mutex is right here: it is never held across an await
//! and every critical section is a few map operations.

pub(crate) mod batch;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::Notify;

use crate::lease::LeaseId;

/// After this many failed attempts a lease is flagged `irrevocable`.
pub const MAX_FAST_ATTEMPTS: u32 = 6;
/// How often an `irrevocable` lease is retried.
pub const SLOW_RETRY: Duration = Duration::from_secs(3600);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// The wait before retry number `attempts + 1`: 1 s, 2 s, 4 s … capped at
/// 10 min, ±20 % jitter so a storm of failures does not retry in lockstep;
/// hourly once the lease is irrevocable.
pub fn backoff(attempts: u32) -> Duration {
    let base = if attempts >= MAX_FAST_ATTEMPTS {
        SLOW_RETRY
    } else {
        BACKOFF_BASE.saturating_mul(1u32 << attempts.saturating_sub(1).min(20)).min(BACKOFF_CAP)
    };
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter)
}

/// When a lease valid from `from` until `until` reaches two thirds of that
/// time: when its holder should renew or replace it.
pub fn warning_at(from: DateTime<Utc>, until: DateTime<Utc>) -> DateTime<Utc> {
    from + (until - from) * 2 / 3
}

/// When an `irrevocable` lease found at start-up is next tried: at a random
/// point of the next [`SLOW_RETRY`], so that a restart neither retries a
/// backlog of them all at once nor resets their slow cadence.
pub fn slow_retry_after_restart(now: DateTime<Utc>) -> DateTime<Utc> {
    let spread = rand::rng().random_range(0..SLOW_RETRY.as_millis() as i64);
    now + chrono::Duration::milliseconds(spread)
}

#[derive(Debug, Default)]
struct Inner {
    by_time: BTreeMap<(DateTime<Utc>, u64), LeaseId>,
    by_id: HashMap<LeaseId, (DateTime<Utc>, u64)>,
    seq: u64,
}

/// The time-ordered index of leases that need work.
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl ExpiryIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules (or moves) `id` to fall due at `at`.
    pub fn schedule(&self, id: LeaseId, at: DateTime<Utc>) {
        let wake = {
            let mut inner = self.inner.lock().unwrap();
            if let Some(old) = inner.by_id.remove(&id) {
                inner.by_time.remove(&old);
            }
            inner.seq += 1;
            let key = (at, inner.seq);
            let earliest = inner.by_time.keys().next().is_none_or(|first| key < *first);
            inner.by_id.insert(id.clone(), key);
            inner.by_time.insert(key, id);
            earliest
        };
        if wake {
            self.notify.notify_one();
        }
    }

    /// Removes `id`; returns whether it was scheduled.
    pub fn remove(&self, id: &LeaseId) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.by_id.remove(id) {
            Some(key) => inner.by_time.remove(&key).is_some(),
            None => false,
        }
    }

    /// Takes up to `max` leases due at or before `now`, earliest first.
    pub fn pop_due(&self, now: DateTime<Utc>, max: usize) -> Vec<LeaseId> {
        let mut inner = self.inner.lock().unwrap();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((&key, _)) = inner.by_time.iter().next() else { break };
            if key.0 > now {
                break;
            }
            let due = inner.by_time.remove(&key).expect("key just seen");
            inner.by_id.remove(&due);
            out.push(due);
        }
        out
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.inner.lock().unwrap().by_time.keys().next().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a deadline earlier than the one being slept on may
    /// have arrived. A notification sent while nobody waits is kept.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// How long to sleep until `at`, as a tokio instant (so tests may pause time).
pub fn instant_of(at: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn id(n: u32) -> LeaseId {
        LeaseId::parse(&format!("r/{n}")).unwrap()
    }

    #[test]
    fn pops_in_deadline_order_and_moves_on_reschedule() {
        let index = ExpiryIndex::new();
        let t0 = Utc::now();
        index.schedule(id(1), t0 + chrono::Duration::seconds(30));
        index.schedule(id(2), t0 + chrono::Duration::seconds(10));
        index.schedule(id(3), t0 + chrono::Duration::seconds(20));
        assert_eq!(index.next_deadline(), Some(t0 + chrono::Duration::seconds(10)));
        // A renewal moves lease 2 past lease 1.
        index.schedule(id(2), t0 + chrono::Duration::seconds(40));
        assert_eq!(index.len(), 3);
        let due = index.pop_due(t0 + chrono::Duration::seconds(35), 10);
        assert_eq!(due, vec![id(3), id(1)]);
        assert!(index.remove(&id(2)));
        assert!(!index.remove(&id(2)));
        assert!(index.is_empty());
    }

    #[test]
    fn pop_due_respects_max() {
        let index = ExpiryIndex::new();
        let past = Utc::now() - chrono::Duration::seconds(1);
        for n in 0..10 {
            index.schedule(id(n), past);
        }
        assert_eq!(index.pop_due(Utc::now(), 4).len(), 4);
        assert_eq!(index.len(), 6);
    }

    #[test]
    fn backoff_doubles_caps_and_slows_down() {
        for (attempts, secs) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (5, 16.0)] {
            let b = backoff(attempts).as_secs_f64();
            assert!(b >= secs * 0.8 && b <= secs * 1.2, "attempt {attempts}: {b}");
        }
        let slow = backoff(MAX_FAST_ATTEMPTS).as_secs_f64();
        assert!(slow >= SLOW_RETRY.as_secs_f64() * 0.8 && slow <= SLOW_RETRY.as_secs_f64() * 1.2, "{slow}");
        assert!(backoff(5) <= BACKOFF_CAP.mul_f64(1.2));
    }

    #[test]
    fn irrevocable_leases_are_spread_over_the_slow_cadence_after_a_restart() {
        let now = Utc::now();
        let slow = chrono::Duration::from_std(SLOW_RETRY).unwrap();
        let at: Vec<_> = (0..1000).map(|_| slow_retry_after_restart(now)).collect();
        assert!(at.iter().all(|t| *t >= now && *t < now + slow));
        // Not all at once: at most a few of 1000 land in the first minute.
        let first_minute = at.iter().filter(|t| **t < now + chrono::Duration::minutes(1)).count();
        assert!(first_minute < 60, "{first_minute} of 1000 retried within a minute");
    }

    #[tokio::test]
    async fn earlier_deadline_wakes_the_sleeper() {
        let index = Arc::new(ExpiryIndex::new());
        index.schedule(id(1), Utc::now() + chrono::Duration::hours(1));
        index.changed().await; // the first schedule stored a wake-up
        let waiter = tokio::spawn({
            let index = index.clone();
            async move { index.changed().await }
        });
        index.schedule(id(2), Utc::now());
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
