//! The daemon's metrics: every name, label and help text lives here.
//!
//! Code records through the one-line functions below (the `metrics`
//! facade's `counter!`, `gauge!` and `histogram!` underneath), so a metric
//! is counted where its event happens and named only in this file.
//! `lessor serve` installs one process-wide Prometheus recorder
//! ([`install`]); `GET /v1/metrics` sets the gauges that are read at scrape
//! time and renders the recorder's text ([`Exporter::render`]). With no
//! recorder installed (unit tests, a library user) every call is a no-op;
//! a test that asserts on metrics sets a recorder of its own on its thread
//! (`metrics::set_default_local_recorder`), so tests share nothing.
//!
//! No label carries a username, a lease id or a secret: labels are names
//! from the config (role, connection, static account), lease states, route
//! templates and status codes, so every label has few values.
//!
//! Reserved: [`AUDIT_WRITE_SECONDS`] (`lessor_audit_write_seconds`, a
//! histogram of the seconds one audit record takes to be written and
//! synced) is named, described and given buckets here for the audit log
//! writer, which records it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::lease::LeaseState;

// Issuance.
pub const LEASES_ISSUED: &str = "lessor_leases_issued_total";
pub const ISSUE_FAILURES: &str = "lessor_issue_failures_total";
pub const ISSUE_SECONDS: &str = "lessor_issue_duration_seconds";
pub const TRANSIENT_RETRIES: &str = "lessor_transient_retries_total";
pub const IN_FLIGHT: &str = "lessor_issuances_in_flight";
pub const UNDELIVERED: &str = "lessor_undelivered_revoked_total";
pub const RENEWED: &str = "lessor_leases_renewed_total";
// Revocation.
pub const REVOCATION_ATTEMPTS: &str = "lessor_revocation_attempts_total";
pub const REVOKED: &str = "lessor_leases_revoked_total";
pub const REVOKE_FAILURES: &str = "lessor_revoke_failures_total";
pub const FLAGGED_IRREVOCABLE: &str = "lessor_leases_irrevocable_total";
pub const LATENESS_SECONDS: &str = "lessor_revocation_lateness_seconds";
pub const ROLLED_BACK: &str = "lessor_leases_rolled_back_total";
// Read at scrape time.
pub const LEASES: &str = "lessor_leases";
pub const IRREVOCABLE: &str = "lessor_leases_irrevocable";
pub const SCHEDULED: &str = "lessor_leases_scheduled";
pub const READY: &str = "lessor_ready";
// Storage.
pub const STORE_COMMITS: &str = "lessor_store_commits_total";
pub const STORE_COMMIT_SECONDS: &str = "lessor_store_commit_duration_seconds";
/// Reserved for the audit log writer: seconds to write and sync one record.
pub const AUDIT_WRITE_SECONDS: &str = "lessor_audit_write_seconds";
// Tidy.
pub const TIDY_RUNS: &str = "lessor_tidy_runs_total";
pub const TIDY_DROPPED: &str = "lessor_tidy_dropped_total";
pub const TIDY_ERRORS: &str = "lessor_tidy_errors_total";
// Static accounts.
pub const STATIC_ROTATIONS: &str = "lessor_static_rotations_total";
pub const STATIC_ROTATION_FAILURES: &str = "lessor_static_rotation_failures_total";
pub const STATIC_RETIREMENTS: &str = "lessor_static_retirements_total";
pub const STATIC_LAST_ROTATION: &str = "lessor_static_last_rotation_timestamp_seconds";
// The socket API.
pub const REQUESTS: &str = "lessor_requests_total";
pub const CONNECTIONS: &str = "lessor_connections_open";
pub const CONNECTIONS_REFUSED: &str = "lessor_connections_refused_total";
// External plugins.
pub const PLUGIN_RESTARTS: &str = "lessor_plugin_restarts_total";
pub const PLUGIN_CALL_SECONDS: &str = "lessor_plugin_call_duration_seconds";
pub const PLUGIN_UP: &str = "lessor_plugin_up";

/// Issuance takes milliseconds on a database and up to seconds on a cloud
/// API; past 30 s a request has timed out.
const ISSUE_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// From the usual few milliseconds, through a drain of thousands of leases
/// expiring at once (target: under 2 s), to the hourly retries of an
/// irrevocable lease.
const LATENESS_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];
/// A commit is an fsync: sub-millisecond on fast disks, tens of
/// milliseconds on slow ones, seconds when the disk is in trouble.
const FSYNC_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// How often histogram samples are folded into their buckets between
/// scrapes, so memory stays bounded however rarely the daemon is scraped.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Every lease state, for the `lessor_leases` gauges.
const STATES: [LeaseState; 5] = [
    LeaseState::Pending,
    LeaseState::Active,
    LeaseState::Revoking,
    LeaseState::Revoked,
    LeaseState::Irrevocable,
];

/// A Prometheus recorder with lessor's histogram buckets, not installed.
/// Tests use one of their own; the daemon installs one with [`install`].
pub fn recorder() -> PrometheusRecorder {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in [
        (ISSUE_SECONDS, ISSUE_BUCKETS),
        (LATENESS_SECONDS, LATENESS_BUCKETS),
        (STORE_COMMIT_SECONDS, FSYNC_BUCKETS),
        (PLUGIN_CALL_SECONDS, ISSUE_BUCKETS),
        (AUDIT_WRITE_SECONDS, FSYNC_BUCKETS),
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .expect("bucket lists are not empty");
    }
    builder.build_recorder()
}

/// Installs the process-wide recorder (once: later calls, such as a second
/// daemon started in the same process, get the same handle) and describes
/// every metric to it.
pub fn install() -> PrometheusHandle {
    static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            if ::metrics::set_global_recorder(recorder).is_err() {
                warn!("another metrics recorder is installed in this process; GET /v1/metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

/// The HELP text of every metric, for the current recorder.
pub fn describe() {
    describe_counter!(LEASES_ISSUED, "Credentials issued, by role.");
    describe_counter!(ISSUE_FAILURES, "Issuances that failed in the backend, by role.");
    describe_histogram!(
        ISSUE_SECONDS,
        Unit::Seconds,
        "Time to issue a credential, by role (successful issuances)."
    );
    describe_counter!(
        TRANSIENT_RETRIES,
        "Creation transactions retried after a transient backend conflict, by role."
    );
    describe_gauge!(IN_FLIGHT, "Issuances started and not yet finished.");
    describe_counter!(
        UNDELIVERED,
        "Credentials revoked at once because the caller was gone when they were made, by role."
    );
    describe_counter!(RENEWED, "Leases renewed, by role.");
    describe_counter!(REVOCATION_ATTEMPTS, "Revocation attempts in the backend, by connection.");
    describe_counter!(REVOKED, "Leases revoked in the backend, by connection.");
    describe_counter!(REVOKE_FAILURES, "Failed revocation attempts, by connection.");
    describe_counter!(FLAGGED_IRREVOCABLE, "Leases flagged irrevocable, by connection.");
    describe_histogram!(
        LATENESS_SECONDS,
        Unit::Seconds,
        "How long after its expiry an expired lease was revoked in the backend."
    );
    describe_counter!(ROLLED_BACK, "Pending leases of a crashed run rolled back at start-up.");
    describe_gauge!(LEASES, "Leases in the store, by role and state (read from the store at scrape time).");
    describe_gauge!(IRREVOCABLE, "Leases flagged irrevocable now, still retried hourly.");
    describe_gauge!(SCHEDULED, "Leases waiting for expiry or a revocation retry.");
    describe_gauge!(READY, "Whether start-up recovery has finished.");
    describe_counter!(STORE_COMMITS, "Lease store commits (group commits).");
    describe_histogram!(STORE_COMMIT_SECONDS, Unit::Seconds, "Time to commit one group of store writes.");
    describe_histogram!(AUDIT_WRITE_SECONDS, Unit::Seconds, "Time to write and sync one audit record.");
    describe_counter!(TIDY_RUNS, "Tidy sweeps run (scheduled and on demand), by connection.");
    describe_counter!(
        TIDY_DROPPED,
        "Backend users dropped by tidy because no lease covered them, by connection."
    );
    describe_counter!(TIDY_ERRORS, "Tidy listings, store reads or drops that failed, by connection.");
    describe_counter!(STATIC_ROTATIONS, "Static-account rotations completed, by account.");
    describe_counter!(STATIC_ROTATION_FAILURES, "Failed static-account rotation steps, by account.");
    describe_counter!(STATIC_RETIREMENTS, "Previous static credentials retired, by account.");
    describe_gauge!(
        STATIC_LAST_ROTATION,
        Unit::Seconds,
        "When the account's current credential was promoted (Unix time), by account."
    );
    describe_counter!(REQUESTS, "Socket API requests answered, by route template and status.");
    describe_gauge!(CONNECTIONS, "Socket connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Socket connections closed at accept, by reason (max_connections, per_uid, accept_error)."
    );
    describe_counter!(PLUGIN_RESTARTS, "Restarts of an external plugin's process, by plugin.");
    describe_histogram!(
        PLUGIN_CALL_SECONDS,
        Unit::Seconds,
        "Time an external plugin took to answer a call, by plugin and operation (failures included)."
    );
    describe_gauge!(PLUGIN_UP, "Whether an external plugin's process is running and answering, by plugin.");
}

/// External plugin `plugin`'s process was started again after it exited
/// or hung.
pub fn plugin_restarted(plugin: &str) {
    counter!(PLUGIN_RESTARTS, "plugin" => plugin.to_owned()).increment(1);
}

/// A call to an external plugin ended (answered, failed or timed out).
pub fn plugin_call(plugin: &str, operation: &'static str, took: Duration) {
    histogram!(PLUGIN_CALL_SECONDS, "plugin" => plugin.to_owned(), "operation" => operation)
        .record(took.as_secs_f64());
}

/// Whether external plugin `plugin` is up now.
pub fn plugin_up(plugin: &str, up: bool) {
    gauge!(PLUGIN_UP, "plugin" => plugin.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// A credential of `role` was issued, after `took`.
pub fn issued(role: &str, took: Duration) {
    counter!(LEASES_ISSUED, "role" => role.to_owned()).increment(1);
    histogram!(ISSUE_SECONDS, "role" => role.to_owned()).record(took);
}

pub fn issue_failed(role: &str) {
    counter!(ISSUE_FAILURES, "role" => role.to_owned()).increment(1);
}

pub fn transient_retry(role: &str) {
    counter!(TRANSIENT_RETRIES, "role" => role.to_owned()).increment(1);
}

pub fn issuance_started() {
    gauge!(IN_FLIGHT).increment(1.0);
}

pub fn issuance_ended() {
    gauge!(IN_FLIGHT).decrement(1.0);
}

pub fn undelivered(role: &str) {
    counter!(UNDELIVERED, "role" => role.to_owned()).increment(1);
}

pub fn renewed(role: &str) {
    counter!(RENEWED, "role" => role.to_owned()).increment(1);
}

/// A revocation on `connection` is about to be tried in the backend.
pub fn revocation_attempt(connection: &str) {
    counter!(REVOCATION_ATTEMPTS, "connection" => connection.to_owned()).increment(1);
}

pub fn revoked(connection: &str) {
    counter!(REVOKED, "connection" => connection.to_owned()).increment(1);
}

pub fn revoke_failed(connection: &str) {
    counter!(REVOKE_FAILURES, "connection" => connection.to_owned()).increment(1);
}

pub fn flagged_irrevocable(connection: &str) {
    counter!(FLAGGED_IRREVOCABLE, "connection" => connection.to_owned()).increment(1);
}

/// An expired lease was revoked `late` after its expiry.
pub fn revocation_lateness(late: Duration) {
    histogram!(LATENESS_SECONDS).record(late);
}

pub fn rolled_back(leases: u64) {
    counter!(ROLLED_BACK).increment(leases);
}

/// The store committed one group of writes in `took`.
pub fn store_commit(took: Duration) {
    counter!(STORE_COMMITS).increment(1);
    histogram!(STORE_COMMIT_SECONDS).record(took);
}

pub fn tidy_run(connection: &str) {
    counter!(TIDY_RUNS, "connection" => connection.to_owned()).increment(1);
}

pub fn tidy_dropped(connection: &str) {
    counter!(TIDY_DROPPED, "connection" => connection.to_owned()).increment(1);
}

pub fn tidy_error(connection: &str) {
    counter!(TIDY_ERRORS, "connection" => connection.to_owned()).increment(1);
}

/// A rotation of `account` completed: its new credential became current `at`.
pub fn static_rotated(account: &str, at: DateTime<Utc>) {
    counter!(STATIC_ROTATIONS, "account" => account.to_owned()).increment(1);
    static_last_rotation(account, at);
}

/// When `account`'s current credential was promoted, as the store says
/// (so the gauge is right again after a restart).
pub fn static_last_rotation(account: &str, at: DateTime<Utc>) {
    let seconds = at.timestamp_millis() as f64 / 1000.0;
    gauge!(STATIC_LAST_ROTATION, "account" => account.to_owned()).set(seconds);
}

pub fn static_rotation_failed(account: &str) {
    counter!(STATIC_ROTATION_FAILURES, "account" => account.to_owned()).increment(1);
}

pub fn static_retired(account: &str) {
    counter!(STATIC_RETIREMENTS, "account" => account.to_owned()).increment(1);
}

/// A request was answered with `status`. `route` is the template the router
/// matched (`/v1/leases/{*rest}`), never the path itself, which can hold a
/// lease id; `None` for a path no route matched.
/// Socket connections open now.
pub fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

/// A connection closed at accept, and why.
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

pub fn request(route: Option<&str>, status: u16) {
    let route = route.unwrap_or("unmatched").to_owned();
    counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

/// What the gauges set at scrape time are read from: the broker and its
/// store implement it, so this module needs neither.
#[async_trait::async_trait]
pub trait Scrape: Send + Sync {
    /// Leases by role and state, from the store.
    async fn lease_counts(&self) -> Result<Vec<(String, LeaseState, u64)>, String>;
    /// Leases waiting for expiry or a revocation retry.
    fn scheduled(&self) -> usize;
    /// Whether start-up recovery has finished.
    fn is_ready(&self) -> bool;
}

#[async_trait::async_trait]
impl<T: Scrape + ?Sized> Scrape for Arc<T> {
    async fn lease_counts(&self) -> Result<Vec<(String, LeaseState, u64)>, String> {
        (**self).lease_counts().await
    }
    fn scheduled(&self) -> usize {
        (**self).scheduled()
    }
    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
}

/// What `GET /v1/metrics` serves: the recorder's text, after the gauges
/// that are read at scrape time are set. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    /// Every role that has had a `lessor_leases` gauge, so one whose leases
    /// are all gone drops to 0 instead of keeping its last value.
    roles: Arc<Mutex<BTreeSet<String>>>,
}

impl Exporter {
    pub fn new(handle: PrometheusHandle) -> Self {
        Self { handle, roles: Arc::default() }
    }

    /// Sets the scrape-time gauges from `source` (the broker), then
    /// renders every metric as Prometheus text.
    pub async fn render(&self, source: &impl Scrape) -> String {
        // One GROUP BY over the whole lease table per scrape: a full scan
        // (no index leads with the role) plus a temporary B-tree for the
        // groups, about 0.6 s per million leases, on a reader connection
        // off the async threads. An index on (role, state) would make it
        // cheap but cost every state change a second index update; a
        // scrape every 15 s or more does not need it.
        match source.lease_counts().await {
            Ok(counts) => self.set_lease_gauges(&counts),
            Err(e) => {
                warn!(error = %e, "cannot count leases for the metrics; the lease gauges keep their last values")
            }
        }
        gauge!(SCHEDULED).set(source.scheduled() as f64);
        gauge!(READY).set(if source.is_ready() { 1.0 } else { 0.0 });
        self.handle.render()
    }

    /// Sets `lessor_leases{role,state}` for every state of every role seen
    /// so far (0 where there are none now) and `lessor_leases_irrevocable`.
    pub(crate) fn set_lease_gauges(&self, counts: &[(String, LeaseState, u64)]) {
        let mut now: HashMap<(&str, LeaseState), u64> = HashMap::new();
        for (role, state, n) in counts {
            *now.entry((role.as_str(), *state)).or_default() += n;
        }
        let mut roles = self.roles.lock().unwrap_or_else(PoisonError::into_inner);
        roles.extend(counts.iter().map(|(role, _, _)| role.clone()));
        for role in roles.iter() {
            for state in STATES {
                let n = now.get(&(role.as_str(), state)).copied().unwrap_or(0);
                gauge!(LEASES, "role" => role.clone(), "state" => state.as_str()).set(n as f64);
            }
        }
        let irrevocable: u64 =
            now.iter().filter(|((_, state), _)| *state == LeaseState::Irrevocable).map(|(_, n)| n).sum();
        gauge!(IRREVOCABLE).set(irrevocable as f64);
    }

    /// Folds histogram samples into their buckets every few seconds until
    /// `shutdown`.
    pub async fn upkeep(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(UPKEEP_EVERY) => self.handle.run_upkeep(),
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
