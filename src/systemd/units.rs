//! A delivered credential's lease, tied to its unit's life: renewed while
//! the unit's cgroup holds a process, revoked as soon as it holds none,
//! and never kept past the role's `max_ttl` (renewals stop there and the
//! lease expires as any other).
//!
//! - The unit's cgroup is found in the cgroup v2 hierarchy by its name,
//!   looking only below directories root made and nobody else may write
//!   ([`trusted_dir`]): a user whose subtree was delegated to it cannot
//!   plant a directory of the unit's name for lessor to watch.
//! - The kernel rewrites the cgroup's `cgroup.events` (`populated 0`) when
//!   its last process exits; inotify wakes the lease's task on every change
//!   of the file, so the lease is revoked within moments. A look every few
//!   seconds backs it up (and replaces it where inotify is unavailable).
//! - The lease records its unit (`owner.unit`); after a restart every such
//!   lease of this node is watched again ([`Lifetimes::rebind`]), and one
//!   whose unit is gone is revoked then.
//! - A cgroup that cannot be found (lessor in another cgroup namespace, or
//!   no cgroup v2) leaves the lease to its TTL, not renewed: it ends at its
//!   TTL however long the unit runs, and the log says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::Utc;
use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::{Broker, BrokerError};
use crate::config::Duration;
use crate::lease::Lease;
use crate::policy::identity::{cgroup_mount, populated, trusted_dir};
use crate::policy::Policies;

/// How often a watched cgroup is looked at even without an inotify event.
const LOOK_EVERY: StdDuration = StdDuration::from_secs(5);
/// The same, where inotify is unavailable.
const LOOK_EVERY_UNWATCHED: StdDuration = StdDuration::from_millis(500);
/// How long a failed renewal (store or claim busy) waits to be tried again.
const RENEW_RETRY: StdDuration = StdDuration::from_secs(5);
/// How deep below the hierarchy's root a unit's cgroup is looked for
/// (`/system.slice/x.service` is 2; nested slices go deeper).
const MAX_DEPTH: usize = 6;

/// A unit's cgroup: its path in the hierarchy and its directory here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCgroup {
    /// As `/proc/<pid>/cgroup` shows it: `/system.slice/billing.service`.
    pub path: String,
    pub dir: PathBuf,
}

/// Finds `unit`'s cgroup: `/system.slice/UNIT` first, then anywhere
/// within [`MAX_DEPTH`] below directories only root may write. Blocking.
pub fn locate(unit: &str) -> Option<UnitCgroup> {
    let mount = cgroup_mount()?;
    let found = |path: String| {
        let dir = mount.join(path.trim_start_matches('/'));
        dir.join("cgroup.events").is_file().then_some(UnitCgroup { path, dir })
    };
    if trusted_dir("/system.slice") {
        if let Some(cgroup) = found(format!("/system.slice/{unit}")) {
            return Some(cgroup);
        }
    }
    let mut level = vec![String::new()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for parent in level {
            // What is inside `parent` was made by root only if `parent`
            // is root's alone.
            if !trusted_dir(if parent.is_empty() { "/" } else { &parent }) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(mount.join(parent.trim_start_matches('/'))) else { continue };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let path = format!("{parent}/{name}");
                if name == unit {
                    return found(path);
                }
                next.push(path);
            }
        }
        level = next;
    }
    None
}

/// inotify watches on `cgroup.events` files, each waking the tasks of the
/// leases tied to that cgroup.
struct Watcher {
    watches: Mutex<Watches>,
    wakers: Arc<Mutex<HashMap<WatchDescriptor, Arc<Notify>>>>,
}

impl Watcher {
    fn start(tasks: &tokio_util::task::TaskTracker, shutdown: CancellationToken) -> std::io::Result<Self> {
        let mut stream = Inotify::init()?.into_event_stream([0u8; 4096])?;
        let watches = stream.watches();
        let wakers: Arc<Mutex<HashMap<WatchDescriptor, Arc<Notify>>>> = Arc::default();
        let dispatch = wakers.clone();
        tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    _ = shutdown.cancelled() => return,
                };
                match event {
                    Some(Ok(event)) => {
                        let mut wakers = dispatch.lock().unwrap();
                        let waker = if event.mask.contains(inotify::EventMask::IGNORED) {
                            // The cgroup was removed: its watch is gone.
                            wakers.remove(&event.wd)
                        } else {
                            wakers.get(&event.wd).cloned()
                        };
                        if let Some(waker) = waker {
                            waker.notify_waiters();
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "cannot read cgroup events; units are looked at every few seconds instead");
                        return;
                    }
                    None => return,
                }
            }
        });
        Ok(Self { watches: Mutex::new(watches), wakers })
    }

    /// Wakes on every change of `dir`'s `cgroup.events`.
    fn watch(&self, dir: &Path) -> Option<Arc<Notify>> {
        let wd = self.watches.lock().unwrap().add(dir.join("cgroup.events"), WatchMask::MODIFY).ok()?;
        Some(self.wakers.lock().unwrap().entry(wd).or_insert_with(|| Arc::new(Notify::new())).clone())
    }
}

/// The leases tied to units, each kept by a task of its own.
pub struct Lifetimes {
    broker: Arc<Broker>,
    policies: Policies,
    watcher: Option<Watcher>,
    shutdown: CancellationToken,
}

impl Lifetimes {
    pub fn new(broker: Arc<Broker>, policies: Policies, shutdown: CancellationToken) -> Arc<Self> {
        let watcher = match Watcher::start(broker.tasks(), shutdown.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                warn!(error = %e, "inotify is unavailable: units' cgroups are looked at twice a second instead");
                None
            }
        };
        Arc::new(Self { broker, policies, watcher, shutdown })
    }

    /// Keeps `lease` (delivered to `lease.owner.unit`) while `cgroup` holds
    /// a process, renewing it by `increment` (the role's default TTL when
    /// `None`).
    pub fn bind(self: &Arc<Self>, lease: Lease, cgroup: UnitCgroup, increment: Option<Duration>) {
        let me = self.clone();
        self.broker.tasks().spawn(async move { me.keep(lease, cgroup, increment).await });
    }

    /// At start-up: every active lease of this node delivered to a unit is
    /// watched again, or revoked if its unit is gone. `increment` says
    /// how far a lease's renewals move it.
    pub async fn rebind(self: &Arc<Self>, increment: impl Fn(&Lease) -> Option<Duration>) {
        let leases = match self.broker.unit_bound().await {
            Ok(leases) => leases,
            Err(e) => {
                warn!(error = %e, "cannot list the leases delivered to units; they run out at their TTL");
                return;
            }
        };
        for lease in leases {
            let Some(unit) = lease.owner.unit.clone() else { continue };
            let name = unit.clone();
            let cgroup = tokio::task::spawn_blocking(move || locate(&name)).await.ok().flatten();
            match cgroup {
                Some(cgroup) => {
                    debug!(lease = %lease.id, unit = %unit, "watching the unit again");
                    let increment = increment(&lease);
                    self.bind(lease, cgroup, increment);
                }
                None => self.revoke(&lease, &unit, "its unit's cgroup is gone").await,
            }
        }
    }

    async fn keep(&self, lease: Lease, cgroup: UnitCgroup, increment: Option<Duration>) {
        let unit = lease.owner.unit.clone().unwrap_or_default();
        let waker = self.watcher.as_ref().and_then(|w| w.watch(&cgroup.dir));
        let look_every = if waker.is_some() { LOOK_EVERY } else { LOOK_EVERY_UNWATCHED };
        let caller = self.policies.unit_caller(&unit, Some(cgroup.path.clone()));
        let mut expires_at = lease.expires_at;
        // How long before expiry a renewal is asked for: a third of the
        // lease's own length, at least a second.
        let ahead = ((lease.expires_at - lease.issued_at) / 3).max(chrono::Duration::seconds(1));
        let mut renewing = lease.renewable;
        let mut retry_at = None;
        loop {
            // Registered before the look, so a change between the two wakes us.
            let mut woken = waker.as_ref().map(|n| Box::pin(n.notified()));
            if let Some(w) = woken.as_mut() {
                w.as_mut().enable();
            }
            if !populated(&cgroup.dir) {
                self.revoke(&lease, &unit, "the unit's processes are gone").await;
                return;
            }
            let now = Utc::now();
            if now >= expires_at {
                // Expired (at max_ttl, or renewals failed): the expiry
                // loop revokes it.
                return;
            }
            let due = expires_at - ahead;
            if renewing && now >= due && retry_at.is_none_or(|at| now >= at) {
                match self.broker.renew(&lease.id, increment, &caller).await {
                    Ok(renewed) => {
                        retry_at = None;
                        if renewed.expires_at <= expires_at || renewed.expires_at >= renewed.max_expires_at {
                            renewing = false;
                            info!(lease = %lease.id, unit = %unit, expires_at = %renewed.expires_at, "lease renewed to its max_ttl; it ends then even if the unit still runs");
                        }
                        expires_at = renewed.expires_at;
                    }
                    Err(e @ (BrokerError::Store(_) | BrokerError::Conflict { state: "busy", .. })) => {
                        warn!(lease = %lease.id, unit = %unit, error = %e, "cannot renew the unit's lease now; trying again");
                        retry_at = Some(now + chrono::Duration::from_std(RENEW_RETRY).unwrap_or_default());
                    }
                    Err(e) => {
                        renewing = false;
                        warn!(lease = %lease.id, unit = %unit, error = %e, "the unit's lease is no longer renewed; it ends at its expiry");
                    }
                }
                continue;
            }
            let next = if renewing { retry_at.unwrap_or(due).min(expires_at) } else { expires_at };
            let wait = (next - now).to_std().unwrap_or_default().min(look_every);
            tokio::select! {
                _ = async { match woken { Some(w) => w.await, None => std::future::pending().await } } => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn revoke(&self, lease: &Lease, unit: &str, why: &str) {
        info!(lease = %lease.id, unit = %unit, "{why}: revoking the credential delivered to it");
        if let Err(e) = self.broker.revoke_ended(&lease.id).await {
            // Recorded and retried by the broker, like any revocation.
            warn!(lease = %lease.id, unit = %unit, error = %e, "revocation failed; it is retried");
        }
    }
}
