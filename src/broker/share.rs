//! `share = "workload"`: callers with the same identity get the same live
//! lease rather than a new backend user each, so the replicas of one
//! deployment share one credential, counted once against quotas.
//!
//! - A *workload* is the role, the policy that granted it, and: for a
//!   container, its image (digest) and labels, less those that differ per
//!   replica (`io.kubernetes.pod.name`, `io.kubernetes.pod.uid`); for a
//!   systemd unit, the unit; otherwise the uid and executable.
//! - Each caller that got the lease is a *holder*: its container's or
//!   unit's cgroup (held while it holds a process), or its process. Every
//!   second the holders are looked at; when the last one has been gone for
//!   the role's `share_grace`, the lease is revoked. While any remains it
//!   is renewed, never past `max_ttl`; then it expires as any lease does,
//!   and the next caller gets a new one.
//! - A caller that is not an admin never revokes a shared lease for all: a
//!   process holder lets go of it, and a container or unit holds it while
//!   its cgroup holds a process, whoever asks. An admin's revocation, or
//!   the lease's expiry, ends it for every holder.
//! - The credential is kept in memory only. After a restart of lessor a
//!   shared lease is not handed out again: it runs to its TTL, unrenewed,
//!   and the next caller gets a new one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use tracing::{debug, info, warn};

use super::{now_ms, Broker, BrokerError, Caller, Issued};
use crate::config::Duration;
use crate::lease::{LeaseId, LeaseState};
use crate::policy::identity::{cgroup_mount, populated, Stamp};
use crate::policy::Grant;

/// Labels that differ between replicas of one workload.
const PER_REPLICA: &[&str] = &["io.kubernetes.pod.name", "io.kubernetes.pod.uid"];
/// How often holders are looked at.
const TEND_EVERY: StdDuration = StdDuration::from_secs(1);

/// The shared leases, by workload.
#[derive(Default)]
pub(super) struct Shares {
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Live>>>>>,
    /// Which workload each shared lease is of.
    by_lease: Mutex<HashMap<LeaseId, String>>,
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials held are never printed.
        f.debug_struct("Shares").field("workloads", &self.entries.lock().unwrap().len()).finish()
    }
}

struct Live {
    issued: Issued,
    holders: Vec<Holder>,
    grace: StdDuration,
    /// When the last holder was seen gone.
    empty_since: Option<Instant>,
    /// The lease's length when issued: it is handed out while at least a
    /// third of that is left.
    length: chrono::Duration,
    renewing: bool,
    retry_at: Option<Instant>,
}

/// What holds a shared lease, and is looked at to tell whether it still does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// A container's or unit's cgroup: held while it holds a process.
    Cgroup(PathBuf),
    /// A process, by pid and start time.
    Process { pid: i32, start_ticks: u64 },
}

impl Holder {
    fn holds(&self) -> bool {
        match self {
            Self::Cgroup(dir) => populated(dir),
            Self::Process { pid, start_ticks } => {
                Stamp::read(*pid).is_some_and(|s| s.start_ticks == *start_ticks)
            }
        }
    }
}

/// A caller's workload, and what of it holds the lease.
pub(super) struct Workload {
    role: String,
    key: String,
    holder: Holder,
}

impl Workload {
    /// `None` when nothing of the caller can be watched (its process
    /// could not be read): it gets a lease of its own.
    pub(super) fn of(role: &str, caller: &Caller, grant: &Grant) -> Option<Self> {
        let who = caller.identity();
        let policy = grant.policy.as_ref().map_or("-", |p| p.name.as_str());
        let what = if let Some(c) = who.container.as_deref() {
            let labels: Vec<String> = c
                .labels
                .iter()
                .filter(|(k, _)| !PER_REPLICA.contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let image = c.image_digest.as_deref().unwrap_or(&c.image);
            format!("image={image}\nlabels={}", labels.join("\n"))
        } else if let Some(unit) = caller.unit().or(who.systemd_unit.as_deref()) {
            format!("unit={unit}")
        } else {
            format!("uid={}\nexe={}", who.uid, who.exe.as_deref()?)
        };
        Some(Self {
            role: role.to_string(),
            key: format!("{role}\n{policy}\n{what}"),
            holder: Holder::of(caller)?,
        })
    }
}

impl Holder {
    /// What of `caller` holds a lease: its container's cgroup, its unit's,
    /// or its process.
    fn of(caller: &Caller) -> Option<Self> {
        let who = caller.identity();
        if let Some(c) = who.container.as_deref() {
            cgroup_through(who.cgroup.as_deref(), |part| part.contains(c.id.as_str()))
        } else if let Some(unit) = caller.unit().or(who.systemd_unit.as_deref()) {
            cgroup_through(who.cgroup.as_deref(), |part| part == unit)
        } else {
            let pid = who.pid?;
            Some(Self::Process { pid, start_ticks: Stamp::read(pid)?.start_ticks })
        }
    }
}

/// The cgroup directory of the trusted `path` down to its first component
/// that `is_it` (the container's, the unit's).
fn cgroup_through(path: Option<&str>, is_it: impl Fn(&str) -> bool) -> Option<Holder> {
    let mut through = Vec::new();
    for part in path?.split('/').filter(|p| !p.is_empty()) {
        through.push(part);
        if is_it(part) {
            return Some(Holder::Cgroup(cgroup_mount()?.join(through.join("/"))));
        }
    }
    None
}

impl Shares {
    fn entry(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Live>>> {
        self.entries.lock().unwrap().entry(key.to_string()).or_default().clone()
    }

    fn all(&self) -> Vec<(String, Arc<tokio::sync::Mutex<Option<Live>>>)> {
        self.entries.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The entry of the workload lease `id` is shared by, if it is.
    fn of_lease(&self, id: &LeaseId) -> Option<Arc<tokio::sync::Mutex<Option<Live>>>> {
        let key = self.by_lease.lock().unwrap().get(id).cloned()?;
        self.entries.lock().unwrap().get(&key).cloned()
    }

    fn unindex(&self, id: &LeaseId) {
        self.by_lease.lock().unwrap().remove(id);
    }
}

impl Broker {
    /// The workload's live lease, or a new one it then shares.
    pub(super) async fn issue_shared(
        &self,
        workload: Workload,
        grace: Duration,
        ttl: Option<Duration>,
        caller: &Caller,
        grant: Grant,
    ) -> Result<Issued, BrokerError> {
        let entry = self.shares.entry(&workload.key);
        let mut live = entry.lock().await;
        if let Some(l) = live.as_mut() {
            let left = l.issued.lease.expires_at - now_ms();
            if left > l.length / 3 {
                if !l.holders.contains(&workload.holder) {
                    l.holders.push(workload.holder);
                }
                l.empty_since = None;
                info!(lease = %l.issued.lease.id, role = %workload.role, holders = l.holders.len(), "handing out the workload's shared lease");
                return Ok(l.issued.clone());
            }
            // Near its end: the next holders get a new one; this one runs
            // out at its expiry.
            debug!(lease = %l.issued.lease.id, "the shared lease is near its end; issuing the workload a new one");
        }
        let mut issued = self.issue_one(&workload.role, ttl, caller, grant, None).await?;
        issued.shared = true;
        if let Some(old) = live.as_ref() {
            self.shares.unindex(&old.issued.lease.id);
        }
        self.shares.by_lease.lock().unwrap().insert(issued.lease.id.clone(), workload.key.clone());
        *live = Some(Live {
            length: issued.lease.expires_at - issued.lease.issued_at,
            renewing: issued.lease.renewable,
            issued: issued.clone(),
            holders: vec![workload.holder],
            grace: grace.as_std(),
            empty_since: None,
            retry_at: None,
        });
        Ok(issued)
    }

    /// A non-admin's revocation of a shared lease: never for every
    /// holder. A process that holds it lets go of it; a container or unit
    /// holds it while its cgroup holds a process, whoever asks. `None`
    /// when `id` is no live shared lease (it is revoked as any other).
    pub(super) async fn release_shared(&self, id: &LeaseId, caller: &Caller) -> Option<usize> {
        let entry = self.shares.of_lease(id)?;
        let mut live = entry.lock().await;
        let l = live.as_mut().filter(|l| &l.issued.lease.id == id)?;
        if let Some(holder @ Holder::Process { .. }) = Holder::of(caller) {
            l.holders.retain(|h| *h != holder);
            if l.holders.is_empty() {
                l.empty_since = Some(Instant::now());
            }
        }
        info!(lease = %id, holders = l.holders.len(), "a holder let go of the shared lease; it is revoked once every holder is gone");
        Some(l.holders.len())
    }

    /// The lease is being revoked (by an admin, its expiry, another
    /// node): it is no workload's any more.
    pub(super) async fn forget_shared(&self, id: &LeaseId) {
        let Some(entry) = self.shares.of_lease(id) else { return };
        self.shares.unindex(id);
        let mut live = entry.lock().await;
        if live.as_ref().is_some_and(|l| &l.issued.lease.id == id) {
            *live = None;
        }
    }

    /// Every second: drops holders that are gone, revokes leases whose
    /// last holder has been gone for `share_grace`, renews the others.
    pub(super) async fn tend_shares(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TEND_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            for (key, entry) in self.shares.all() {
                // Busy (an issuance for the workload runs): next time.
                let Ok(mut live) = entry.try_lock() else { continue };
                let Some(l) = live.as_mut() else {
                    drop(live);
                    let mut entries = self.shares.entries.lock().unwrap();
                    if entries.get(&key).is_some_and(|e| Arc::strong_count(e) == 1) {
                        entries.remove(&key);
                    }
                    continue;
                };
                let holders = std::mem::take(&mut l.holders);
                l.holders =
                    tokio::task::spawn_blocking(move || holders.into_iter().filter(Holder::holds).collect())
                        .await
                        .unwrap_or_default();
                let id = l.issued.lease.id.clone();
                let now = now_ms();
                if now >= l.issued.lease.expires_at {
                    // A holder may have renewed it meanwhile: the store says.
                    match self.store.get(&id).await {
                        Ok(Some(lease)) if lease.state == LeaseState::Active && lease.expires_at > now => {
                            l.issued.lease = lease;
                        }
                        // Ended: the expiry loop revokes it.
                        Ok(_) => {
                            *live = None;
                            self.shares.unindex(&id);
                            continue;
                        }
                        Err(e) => {
                            debug!(lease = %id, error = %e, "cannot read the shared lease; looking again shortly");
                            continue;
                        }
                    }
                }
                if l.holders.is_empty() {
                    let since = *l.empty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= l.grace {
                        *live = None;
                        drop(live);
                        self.shares.unindex(&id);
                        info!(lease = %id, "the shared lease's last holder has been gone for share_grace; revoking it");
                        if let Err(e) = self.revoke_ended(&id).await {
                            warn!(lease = %id, error = %e, "revocation failed; it is retried");
                        }
                    }
                    continue;
                }
                l.empty_since = None;
                let ahead = (l.length / 3).max(chrono::Duration::seconds(1));
                let due = l.issued.lease.expires_at - ahead;
                if l.renewing && now >= due && l.retry_at.is_none_or(|at| Instant::now() >= at) {
                    match self.renew_held(&id, None).await {
                        Ok(renewed) => {
                            if renewed.expires_at <= l.issued.lease.expires_at
                                || renewed.expires_at >= renewed.max_expires_at
                            {
                                l.renewing = false;
                            }
                            l.retry_at = None;
                            l.issued.lease = renewed;
                        }
                        Err(e) => {
                            warn!(lease = %id, error = %e, "cannot renew the shared lease now; trying again");
                            l.retry_at = Some(Instant::now() + StdDuration::from_secs(5));
                        }
                    }
                }
            }
        }
    }
}
