//! Counters the daemon keeps about itself, rendered as Prometheus text.
//!
//! Plain atomics: every update is one relaxed add on a hot path, and a
//! scrape reads each once. No label carries a username or secret.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The daemon's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    pub issued: AtomicU64,
    pub issue_failures: AtomicU64,
    /// Creation transactions retried after a transient backend conflict.
    pub transient_retries: AtomicU64,
    pub renewed: AtomicU64,
    pub revoked: AtomicU64,
    pub revoke_failures: AtomicU64,
    /// Leases that reached `irrevocable`.
    pub irrevocable: AtomicU64,
    /// Leases that are `irrevocable` now (a gauge, rebuilt at start-up).
    pub irrevocable_now: AtomicU64,
    /// Pending leases rolled back (at start-up or after a failed issuance).
    pub rolled_back: AtomicU64,
    /// Credentials made for a caller that was gone by then (it hung up, or
    /// its request timed out), revoked at once.
    pub undelivered: AtomicU64,
    /// Sum and count of revocation lateness (revoked_at − expires_at), in ms,
    /// for revocations triggered by expiry.
    pub lateness_ms_sum: AtomicU64,
    pub lateness_count: AtomicU64,
    pub lateness_ms_max: AtomicU64,
    /// Issuances started and not yet answered (a gauge).
    pub in_flight: AtomicU64,
}

/// Gauges read at scrape time from other parts of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub scheduled: usize,
    pub ready: bool,
    pub store_commits: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how late an expiry-triggered revocation completed.
    pub fn record_lateness(&self, late_ms: u64) {
        self.lateness_ms_sum.fetch_add(late_ms, Ordering::Relaxed);
        self.lateness_count.fetch_add(1, Ordering::Relaxed);
        self.lateness_ms_max.fetch_max(late_ms, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter("lessor_leases_issued_total", "Credentials issued.", get(&self.issued));
        counter("lessor_issue_failures_total", "Issuances that failed.", get(&self.issue_failures));
        counter(
            "lessor_transient_retries_total",
            "Creation transactions retried after a transient backend conflict.",
            get(&self.transient_retries),
        );
        counter("lessor_leases_renewed_total", "Leases renewed.", get(&self.renewed));
        counter("lessor_leases_revoked_total", "Leases revoked in the backend.", get(&self.revoked));
        counter("lessor_revoke_failures_total", "Failed revocation attempts.", get(&self.revoke_failures));
        counter("lessor_leases_irrevocable_total", "Leases flagged irrevocable.", get(&self.irrevocable));
        counter("lessor_leases_rolled_back_total", "Pending leases rolled back.", get(&self.rolled_back));
        counter(
            "lessor_undelivered_revoked_total",
            "Credentials revoked at once because the caller was gone when they were made.",
            get(&self.undelivered),
        );
        counter(
            "lessor_revocation_lateness_ms_sum",
            "Sum of revocation lateness after expiry, in milliseconds.",
            get(&self.lateness_ms_sum),
        );
        counter(
            "lessor_revocation_lateness_count",
            "Expiry-triggered revocations measured for lateness.",
            get(&self.lateness_count),
        );
        counter("lessor_store_commits_total", "Lease store commits (group commits).", gauges.store_commits);
        let _ = writeln!(
            out,
            "# HELP lessor_revocation_lateness_ms_max Latest revocation after expiry, in milliseconds.\n\
             # TYPE lessor_revocation_lateness_ms_max gauge\nlessor_revocation_lateness_ms_max {}",
            get(&self.lateness_ms_max)
        );
        let _ = writeln!(
            out,
            "# HELP lessor_leases_irrevocable Leases flagged irrevocable now, still retried hourly.\n\
             # TYPE lessor_leases_irrevocable gauge\nlessor_leases_irrevocable {}",
            get(&self.irrevocable_now)
        );
        let _ = writeln!(
            out,
            "# HELP lessor_issuances_in_flight Issuances started and not yet finished.\n\
             # TYPE lessor_issuances_in_flight gauge\nlessor_issuances_in_flight {}",
            get(&self.in_flight)
        );
        let _ = writeln!(
            out,
            "# HELP lessor_leases_scheduled Leases waiting for expiry or a revocation retry.\n\
             # TYPE lessor_leases_scheduled gauge\nlessor_leases_scheduled {}",
            gauges.scheduled
        );
        let _ = writeln!(
            out,
            "# HELP lessor_ready Whether start-up recovery has finished.\n# TYPE lessor_ready gauge\nlessor_ready {}",
            u8::from(gauges.ready)
        );
        out
    }
}
