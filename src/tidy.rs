//! Reconciliation ("tidy"): the sweep that removes backend users lessor
//! made but no longer tracks, on every backend whose plugin can list its
//! users (PostgreSQL, MySQL/MariaDB).
//!
//! Issuance already leaves no orphan on its own (DESIGN §1: the pending
//! lease is durable before the backend is touched, and every failure is
//! rolled back). Tidy is the second line: users left by a force-revoke
//! whose backend refused, a restored backup, an older lessor, a store that
//! was lost, or a person. Per connection with `tidy = true`, a user is
//! dropped when all of these hold:
//!
//! 1. its name starts with the connection's `tidy_prefix`, the name space
//!    lessor owns there (never the admin user, checked at load);
//! 2. no lease in the store covers it, on any connection: a lease in any
//!    state but `revoked` does (a `pending` lease is written before its user
//!    is created), and so does one revoked less than `tidy_grace` ago; a
//!    user whose lease was revoked longer ago should not exist at all;
//! 3. it is older than `tidy_grace`: by the backend's own creation time
//!    when it keeps one (MySQL, MariaDB), otherwise by when this daemon's
//!    tidy first saw it (PostgreSQL).
//!
//! The order makes it race-free: the backend is listed *first*, the store
//! read *after*. A user that exists at listing time was created after its
//! pending lease was committed, so the later read sees that lease; a user
//! created after the listing is not in it. Users are dropped with the
//! plugin's default revocation recipe (ends sessions, then drops), one at
//! a time, each logged and counted; never a password anywhere.
//!
//! Tidy runs once the start-up recovery is done, then every
//! `tidy_interval` (sooner when a user seen too young to drop comes of
//! age), and on demand through `POST /v1/tidy` / `lessor tidy`, which can
//! also only report what it would drop (`dry_run`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::Utc;
use lessor_plugin::{LeaseRef, Plugin, PluginError};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::TidySettings;
use crate::rotation::Rotator;
use crate::setup::Setup;
use crate::store::LeaseStore;

/// The soonest a follow-up run is scheduled, however close a user is to
/// coming of age.
const MIN_FOLLOW_UP: StdDuration = StdDuration::from_secs(1);
/// The lease id tidy's revocations are logged under by plugins.
const TIDY_LEASE_ID: &str = "(tidy)";

/// What one sweep of one connection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub connection: String,
    /// Users dropped by this run.
    pub dropped: Vec<String>,
    /// Users a dry run would have dropped.
    pub would_drop: Vec<String>,
    /// What failed (listing, the store, a drop), one line each.
    pub errors: Vec<String>,
}

/// Why an on-demand sweep could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TidyError {
    /// No connection of that name is configured (404).
    #[error("unknown connection {name:?}")]
    UnknownConnection { name: String },
    /// The connection exists but has no `tidy = true` (400).
    #[error("tidy is not enabled on connection {name:?} (set tidy = true and tidy_prefix)")]
    NotEnabled { name: String },
    /// No connection has tidy enabled (400).
    #[error("tidy is not enabled on any connection (set tidy = true and tidy_prefix)")]
    NoneEnabled,
}

impl TidyError {
    /// The HTTP status and the machine-readable code for this error.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::UnknownConnection { .. } => (404, "unknown_connection"),
            Self::NotEnabled { .. } | Self::NoneEnabled => (400, "bad_request"),
        }
    }
}

/// One connection tidy sweeps.
#[derive(Debug)]
struct Target {
    plugin: Arc<dyn Plugin>,
    settings: TidySettings,
    /// The longest one backend call may take (the connection's
    /// `operation_timeout`); a drop that takes longer counts as failed and
    /// the sweep goes on with the next user.
    timeout: StdDuration,
    /// One sweep at a time per connection (scheduled and on demand).
    running: tokio::sync::Mutex<()>,
    /// Uncovered users by name, with when a sweep first saw them: the age
    /// of a user whose backend keeps no creation time.
    first_seen: Mutex<HashMap<String, Instant>>,
    /// The users of static accounts on this connection: never listed, never
    /// dropped, whatever the prefix (config refuses a prefix that matches
    /// one; this holds even so).
    static_users: HashSet<String>,
}

/// The sweeper. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Tidy {
    /// Every configured connection: `Some` where tidy is on.
    targets: BTreeMap<String, Option<Target>>,
    store: Arc<dyn LeaseStore>,
    /// Where dropped users are recorded (the rotator's log).
    audit: crate::audit::Audit,
    /// This node's id: with a shared store, each scheduled sweep of a
    /// connection is claimed in the store, so one node runs it.
    node: String,
}

/// A sweep's outcome plus when the next one is due for a user that was
/// too young this time.
struct Sweep {
    report: Report,
    follow_up: Option<Instant>,
}

impl Tidy {
    pub fn new(setup: &Setup, store: Arc<dyn LeaseStore>, rotator: &Rotator) -> Arc<Self> {
        let targets = setup
            .connections
            .iter()
            .map(|(name, connection)| {
                let target = connection.tidy.clone().map(|settings| Target {
                    plugin: connection.plugin.clone(),
                    settings,
                    timeout: connection.operation_timeout.as_std(),
                    running: tokio::sync::Mutex::new(()),
                    first_seen: Mutex::new(HashMap::new()),
                    static_users: rotator.usernames_on(name),
                });
                (name.clone(), target)
            })
            .collect();
        Arc::new(Self { targets, store, audit: rotator.audit.clone(), node: setup.config.server.node() })
    }

    /// Whether any connection has tidy on.
    pub fn is_enabled(&self) -> bool {
        self.targets.values().any(Option::is_some)
    }

    /// Sweeps one connection, or every one with tidy on; `dry_run` only
    /// reports what would be dropped.
    pub async fn run(&self, connection: Option<&str>, dry_run: bool) -> Result<Vec<Report>, TidyError> {
        let selected: Vec<(&String, &Target)> = match connection {
            Some(name) => match self.targets.get_key_value(name) {
                None => return Err(TidyError::UnknownConnection { name: name.to_string() }),
                Some((_, None)) => return Err(TidyError::NotEnabled { name: name.to_string() }),
                Some((name, Some(target))) => vec![(name, target)],
            },
            None => self.targets.iter().filter_map(|(n, t)| t.as_ref().map(|t| (n, t))).collect(),
        };
        if selected.is_empty() {
            return Err(TidyError::NoneEnabled);
        }
        let mut reports = Vec::with_capacity(selected.len());
        for (name, target) in selected {
            reports.push(self.sweep(name, target, dry_run).await.report);
        }
        Ok(reports)
    }

    /// One sweep of one connection: list, read the store, drop.
    async fn sweep(&self, name: &str, target: &Target, dry_run: bool) -> Sweep {
        let _one_at_a_time = target.running.lock().await;
        crate::metrics::tidy_run(name);
        let mut report = Report { connection: name.to_string(), ..Report::default() };
        let prefix = &target.settings.prefix;
        let fail = |report: &mut Report, what: String| {
            crate::metrics::tidy_error(name);
            warn!(connection = name, error = %what, "tidy");
            report.errors.push(what);
        };

        // 1. The backend first (see the module doc for why the order matters).
        let users = match call(target.timeout, target.plugin.list_users(prefix)).await {
            Ok(users) => users,
            Err(e) => {
                fail(&mut report, format!("listing users under {prefix:?}: {e}"));
                return Sweep { report, follow_up: None };
            }
        };
        let users: Vec<_> = users
            .into_iter()
            .filter(|u| u.name.starts_with(prefix.as_str()) && !target.static_users.contains(&u.name))
            .collect();
        // 2. Then the store.
        let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
        // A user whose lease was revoked longer than the grace ago should
        // not exist: it is not covered.
        let revoked_since = Utc::now() - target.settings.grace.to_chrono();
        let leased = match self.store.leased_usernames(&names, revoked_since).await {
            Ok(leased) => leased,
            Err(e) => {
                fail(&mut report, format!("reading the lease store: {e}"));
                return Sweep { report, follow_up: None };
            }
        };

        // 3. Age the uncovered ones.
        let now = Instant::now();
        let now_utc = Utc::now();
        let grace = target.settings.grace.as_std();
        let mut due = Vec::new();
        let mut follow_up: Option<Instant> = None;
        {
            let mut first_seen = target.first_seen.lock().unwrap();
            let mut still_uncovered = HashMap::new();
            for user in users.iter().filter(|u| !leased.contains(&u.name)) {
                let seen = *first_seen.get(&user.name).unwrap_or(&now);
                still_uncovered.insert(user.name.clone(), seen);
                let age = match user.created_at {
                    Some(created) => (now_utc - created).to_std().unwrap_or(StdDuration::ZERO),
                    None => now.duration_since(seen),
                };
                if age >= grace {
                    due.push(user.name.clone());
                } else {
                    let at = now + (grace - age).max(MIN_FOLLOW_UP);
                    follow_up = Some(follow_up.map_or(at, |f| f.min(at)));
                }
            }
            // Forget users that are gone or now covered.
            *first_seen = still_uncovered;
        }
        due.sort();

        // 4. Drop (or only report).
        if dry_run {
            report.would_drop = due;
            return Sweep { report, follow_up };
        }
        for username in due {
            let lease = LeaseRef {
                lease_id: TIDY_LEASE_ID,
                role: "",
                settings: None,
                username: &username,
                plugin_data: None,
            };
            match call(target.timeout, target.plugin.revoke(&lease)).await {
                Ok(()) => {
                    crate::metrics::tidy_dropped(name);
                    let record = crate::audit::Record::new("tidy.drop", crate::audit::Actor::daemon());
                    self.audit.record_background(record.target(format!("{name}/{username}")));
                    target.first_seen.lock().unwrap().remove(&username);
                    info!(connection = name, username = %username, "tidy dropped a user no lease covers");
                    report.dropped.push(username);
                }
                Err(e) => fail(&mut report, format!("dropping {username}: {e}")),
            }
        }
        Sweep { report, follow_up }
    }

    /// Starts one background sweeper per connection with tidy on: the first
    /// sweep once `ready` says start-up recovery is done, then every
    /// `tidy_interval`, or sooner when a user seen too young comes of age.
    pub fn start(
        self: &Arc<Self>,
        ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        for name in self.targets.iter().filter(|(_, t)| t.is_some()).map(|(n, _)| n.clone()) {
            let me = self.clone();
            let ready = ready.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                while !ready() {
                    tokio::select! {
                        _ = tokio::time::sleep(StdDuration::from_millis(100)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                let Some(Some(target)) = me.targets.get(&name) else { return };
                loop {
                    let interval = target.settings.interval.as_std();
                    let mut next = Instant::now() + interval;
                    if me.claim_sweep(&name, interval).await {
                        let sweep = me.sweep(&name, target, false).await;
                        let r = &sweep.report;
                        if !r.dropped.is_empty() || !r.errors.is_empty() {
                            info!(connection = %name, dropped = r.dropped.len(), errors = r.errors.len(), "tidy sweep done");
                        }
                        if let Some(at) = sweep.follow_up {
                            next = next.min(at);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        }
    }
}

impl Tidy {
    /// Whether this node runs the scheduled sweep of `connection` now: the
    /// claim `tidy:<connection>` in the store, held for most of an
    /// interval and never released, so that of several nodes sharing the
    /// store one sweeps per interval. (With a store of one node the claim
    /// is always this node's.) A store that cannot answer means no sweep:
    /// tidy needs the store anyway.
    async fn claim_sweep(&self, connection: &str, interval: StdDuration) -> bool {
        let hold = interval.mul_f64(0.9);
        match self.store.static_claim(&format!("tidy:{connection}"), &self.node, hold).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                debug!(connection, "another node runs this tidy sweep");
                false
            }
            Err(e) => {
                warn!(connection, error = %e, "cannot claim the tidy sweep; skipping it");
                false
            }
        }
    }
}

/// A backend call bounded by the connection's operation timeout.
async fn call<T>(
    timeout: StdDuration,
    future: impl std::future::Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => {
            Err(PluginError::Unavailable { message: format!("no answer within {}s", timeout.as_secs()) })
        }
    }
}

#[cfg(test)]
mod tests;
