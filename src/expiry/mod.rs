//! When leases fall due: the time-ordered indexes of every lease that
//! needs work at some instant (in `timeline`: an active lease at its
//! expiry, a failed revocation at its next retry, an expiring warning),
//! the backoff that spaces retries, the deadline every backend call gets
//! ([`bounded`]), and (in `batch`) the gathering of due revocations into
//! batches per connection. The broker drives them: its revocation
//! attempts and loop are in `broker/revocation.rs`; the start-up read and
//! the refills that fill the indexes within the expiry window
//! ([`Horizon`]) in `broker/window.rs`.
//!
//! The indexes have the shape of mini-redis's expiry set: an ordered set
//! of `(deadline, id)` for "what is next" and a [`Notify`](tokio::sync::Notify)
//! that wakes the one task sleeping until the earliest deadline when an
//! earlier one arrives.

pub(crate) mod batch;
mod timeline;

use std::time::Duration;

use chrono::{DateTime, Utc};
use lessor_plugin::PluginError;
use rand::Rng;

pub use timeline::{Due, ExpiryIndex, Horizon, WarningIndex, ANY_ATTEMPT};

/// After this many failed attempts a lease is flagged `irrevocable`.
pub const MAX_FAST_ATTEMPTS: u32 = 6;
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(600);

/// The wait before retry number `attempts + 1`: 1 s, 2 s, 4 s … capped at
/// 10 min, ±20 % jitter so a storm of failures does not retry in lockstep;
/// `slow_retry` (`server.irrevocable_retry`) once the lease is irrevocable.
pub fn backoff(attempts: u32, slow_retry: Duration) -> Duration {
    let base = if attempts >= MAX_FAST_ATTEMPTS {
        slow_retry
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
/// point of the next `slow_retry`, so that a restart neither retries a
/// backlog of them all at once nor resets their slow cadence.
pub fn slow_retry_after_restart(now: DateTime<Utc>, slow_retry: Duration) -> DateTime<Utc> {
    let spread = rand::rng().random_range(0..(slow_retry.as_millis() as i64).max(1));
    now + chrono::Duration::milliseconds(spread)
}

/// How long to sleep until `at`, as a tokio instant (so tests may pause time).
pub fn instant_of(at: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

/// Runs a plugin call with a deadline: a backend that stops answering
/// (a half-open connection, a statement stuck on a lock) becomes an
/// ordinary retryable failure instead of holding a worker forever.
///
/// The SQL plugins bound their statements by the same `operation_timeout`
/// themselves and cancel them on the server; this outer bound, longer than
/// their pool wait plus that cancel, is the backstop for every plugin.
pub(crate) async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    // The plugin's own deadline starts only once it has a connection (the
    // pool wait, up to 15 s, comes first) and may need a grace for the
    // cancel and one for closing the connection: this must not fire first.
    let backstop = limit + Duration::from_secs(15) + lessor_plugin::CANCEL_GRACE * 2;
    match tokio::time::timeout(backstop, call).await {
        Ok(result) => result,
        Err(_) => Err(PluginError::Unavailable { message: format!("no answer within {}s", limit.as_secs()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW_RETRY: Duration = Duration::from_secs(3600);

    #[test]
    fn backoff_doubles_caps_and_slows_down() {
        for (attempts, secs) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (5, 16.0)] {
            let b = backoff(attempts, SLOW_RETRY).as_secs_f64();
            assert!(b >= secs * 0.8 && b <= secs * 1.2, "attempt {attempts}: {b}");
        }
        let slow = backoff(MAX_FAST_ATTEMPTS, SLOW_RETRY).as_secs_f64();
        assert!(slow >= SLOW_RETRY.as_secs_f64() * 0.8 && slow <= SLOW_RETRY.as_secs_f64() * 1.2, "{slow}");
        assert!(backoff(5, SLOW_RETRY) <= BACKOFF_CAP.mul_f64(1.2));
    }

    #[test]
    fn irrevocable_leases_are_spread_over_the_slow_cadence_after_a_restart() {
        let now = Utc::now();
        let slow = chrono::Duration::from_std(SLOW_RETRY).unwrap();
        let at: Vec<_> = (0..1000).map(|_| slow_retry_after_restart(now, SLOW_RETRY)).collect();
        assert!(at.iter().all(|t| *t >= now && *t < now + slow));
        // Not all at once: at most a few of 1000 land in the first minute.
        let first_minute = at.iter().filter(|t| **t < now + chrono::Duration::minutes(1)).count();
        assert!(first_minute < 60, "{first_minute} of 1000 retried within a minute");
    }
}
