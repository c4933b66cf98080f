//! The broker: issuance, renewal and revocation of leases, and the
//! background work that revokes leases when they fall due.
//!
//! The order of operations is the product (DESIGN §1):
//! - issuing writes a durable `pending` lease *before* the backend is
//!   touched, so a crash at any instant leaves a record of the username;
//! - every failure after that turns into an ordinary idempotent revocation;
//! - revocation never gives up: failures back off and, after
//!   [`expiry::MAX_FAST_ATTEMPTS`], the lease is flagged `irrevocable` and retried
//!   hourly;
//! - revocations run on a per-connection semaphore apart from issuance, so
//!   a storm of expiries cannot starve new requests.
//!
//! Operations on one lease are serialised within the daemon by a per-lease
//! async lock ([`locks`]) and, when nodes share a store, across them by the
//! lease row's claim (`LeaseStore::claim`, see [`crate::store::cluster`]). Listing a
//! caller's leases page by page is in `list`, renewal in `renew`,
//! revocation on a caller's behalf in `revoke`, `Idempotency-Key` in
//! [`idempotency`]. How revocations are attempted, retried, batched and
//! scheduled lives in [`crate::expiry`].

mod cluster;
pub mod idempotency;
mod list;
mod locks;
mod renew;
mod revocation;
mod revoke;
mod share;
mod types;
mod window;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use lessor_plugin::{names, CreateRequest, LeaseRef, PluginError};
use rand::Rng;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Duration;
use crate::events::Events;
use crate::expiry::{self, bounded, ExpiryIndex, Horizon, WarningIndex};
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::metrics;
use crate::policy::quota::Quotas;
use crate::policy::Grant;
use crate::setup::{Connection, Role, Setup};
use crate::store::{LeaseStore, Write};
use locks::LeaseLocks;
pub use types::{BrokerError, Caller, Issued, Revocation};

/// How long a creation transaction keeps being retried when the backend
/// reports transient conflicts (concurrent GRANTs, deadlocks,
/// serialization failures). A budget of time rather than of attempts: under
/// heavy contention many short retries are normal, and the caller should
/// see a credential, not an error.
const CREATE_RETRY_BUDGET: StdDuration = StdDuration::from_secs(10);

/// How many revocations of one `revoke -prefix` are under way at once: two
/// full batches (see `expiry::batch`).
const REVOKE_PREFIX_CONCURRENCY: usize = 2 * crate::expiry::batch::MAX_BATCH;

/// A connection as the broker runs it: the plugin and its revocation pool.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) connection: Connection,
    /// Admin connections for revocations, kept apart from issuance so a
    /// burst of issuances cannot starve revocation (and the reverse).
    pub(crate) revocations: Arc<Semaphore>,
    /// Admin connections for issuance and renewal.
    issuance: Arc<Semaphore>,
    pub(crate) operation_timeout: StdDuration,
    /// Gathers revocations into batches, for plugins that revoke in batches.
    pub(crate) batcher: crate::expiry::batch::Batcher,
}

/// The broker. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Broker {
    roles: BTreeMap<String, Role>,
    backends: HashMap<String, Backend>,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) index: ExpiryIndex,
    /// When other nodes' leases (of a shared store) fall due, a grace
    /// later: what wakes this node to sweep for work they left undone
    /// (see [`crate::store::cluster`]). Empty with a store of one node.
    pub(crate) foreign: ExpiryIndex,
    /// When each active lease reaches two thirds of its TTL, for the
    /// `lease_expiring` event of `GET /v1/watch`.
    pub(crate) warnings: WarningIndex,
    /// How far ahead `index`, `foreign` and `warnings` reach; refilled
    /// from the store every half `window` (`window.rs`).
    pub(crate) horizon: Horizon,
    /// `server.expiry_window`.
    pub(crate) window: StdDuration,
    pub(crate) events: Events,
    pub(crate) locks: LeaseLocks,
    pub(crate) ready: AtomicBool,
    /// Woken when `ready` is set.
    pub(crate) became_ready: tokio::sync::Notify,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) revoked_retention: Duration,
    /// How often an `irrevocable` lease is tried again (`server.irrevocable_retry`).
    pub(crate) irrevocable_retry: std::time::Duration,
    /// `max_leases` of roles and policies, and what is held against them.
    pub(crate) quotas: Quotas,
    /// Credentials answered for an `Idempotency-Key`, sealed in memory.
    remembered: idempotency::Remembered,
    /// Where background revocations (expiries, rollbacks) are recorded.
    pub(crate) audit: crate::audit::Audit,
    /// Leases whose issuance this process is running now. Start-up recovery
    /// leaves these alone and rolls back every other `pending` lease: which
    /// ones are in flight is known here, not guessed from timestamps (a
    /// clock stepped backwards would make a crashed run's lease look new).
    pub(crate) issuing: Mutex<HashSet<LeaseId>>,
    /// Leases rolled back after an issuance whose outcome in the backend is
    /// unknown (it timed out, or the connection was lost, or the process
    /// issuing it died): their first successful revocation is checked once
    /// more a grace period later.
    pub(crate) unsettled: Mutex<HashSet<LeaseId>>,
    /// Those of them whose second look is scheduled.
    pub(crate) rechecking: Mutex<HashSet<LeaseId>>,
    /// Leases another node rolled back while this one, out of touch,
    /// still made their credential (see `Write::Reopen`): their lease was
    /// counted revoked once already.
    pub(crate) reopened: Mutex<HashSet<LeaseId>>,
    /// The live leases of `share = "workload"` roles, by workload.
    shares: share::Shares,
}

impl Broker {
    pub fn new(
        setup: &Setup,
        store: Arc<dyn LeaseStore>,
        shutdown: CancellationToken,
        events: Events,
        audit: crate::audit::Audit,
    ) -> Arc<Self> {
        let backends = setup
            .connections
            .iter()
            .map(|(name, connection)| {
                let revocations = Arc::new(Semaphore::new(connection.revocation_workers));
                let backend = Backend {
                    connection: connection.clone(),
                    batcher: crate::expiry::batch::Batcher::new(
                        connection.plugin.clone(),
                        revocations.clone(),
                        connection.operation_timeout.as_std(),
                    ),
                    revocations,
                    issuance: Arc::new(Semaphore::new(
                        connection.max_connections.saturating_sub(connection.revocation_workers).max(1),
                    )),
                    operation_timeout: connection.operation_timeout.as_std(),
                };
                (name.clone(), backend)
            })
            .collect();
        Arc::new(Self {
            roles: setup.roles.clone(),
            backends,
            store,
            index: ExpiryIndex::new(),
            foreign: ExpiryIndex::new(),
            warnings: WarningIndex::new(),
            horizon: Horizon::default(),
            window: setup.config.server.expiry_window.as_std(),
            events,
            locks: LeaseLocks::default(),
            ready: AtomicBool::new(false),
            became_ready: tokio::sync::Notify::new(),
            tasks: TaskTracker::new(),
            shutdown,
            revoked_retention: setup.config.server.revoked_retention,
            irrevocable_retry: setup.config.server.irrevocable_retry.as_std(),
            audit,
            remembered: idempotency::Remembered::default(),
            quotas: Quotas::new(
                setup.roles.values().filter_map(|r| Some((r.name.clone(), r.max_leases?))).collect(),
                setup.policies.iter().filter_map(|p| Some((p.name.clone(), p.max_leases?))).collect(),
            ),
            issuing: Mutex::default(),
            unsettled: Mutex::default(),
            rechecking: Mutex::default(),
            reopened: Mutex::default(),
            shares: share::Shares::default(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Returns once start-up recovery is done (at once if it is).
    pub async fn wait_ready(&self) {
        loop {
            // Registered before the check, so a wake-up between the two is kept.
            let woken = self.became_ready.notified();
            if self.is_ready() {
                return;
            }
            woken.await;
        }
    }

    /// Counts the live leases `max_leases` limits, from the store (in a
    /// shared store, those this node issued). Call it once, before serving:
    /// issuances made before it would be counted twice.
    pub async fn load_quotas(&self) -> Result<(), BrokerError> {
        if self.quotas.is_configured() {
            for (role, policy, n) in self.store.live_counts().await? {
                self.quotas.count(&role, policy.as_deref(), n as usize);
            }
        }
        Ok(())
    }

    /// Leases waiting for expiry (within the expiry window) or a retry.
    pub fn scheduled(&self) -> usize {
        self.index.len()
    }

    /// The tracker of background tasks, for shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Starts the expiry loop and the start-up recovery scan. Returns at
    /// once: readiness is reported when the scan is done.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        self.tasks.spawn(async move { me.expiry_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move { me.expiring_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move {
            let mut failures = 0;
            while let Err(e) = me.recover().await {
                failures += 1;
                let wait = expiry::backoff(failures.min(expiry::MAX_FAST_ATTEMPTS - 1), me.irrevocable_retry);
                warn!(error = %e, retry_in_s = wait.as_secs(), "start-up recovery failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = me.shutdown.cancelled() => return,
                }
            }
        });
        let me = self.clone();
        self.tasks.spawn(async move { me.window_loop().await });
        let me = self.clone();
        self.tasks.spawn(async move { me.purge_loop().await });
        if self.roles.values().any(|r| r.share.is_some()) {
            let me = self.clone();
            self.tasks.spawn(async move { me.tend_shares().await });
        }
        self.start_cluster();
    }

    fn role(&self, name: &str) -> Result<&Role, BrokerError> {
        self.roles.get(name).ok_or_else(|| BrokerError::UnknownRole { role: name.to_string() })
    }

    /// Issues a credential for `role`. Runs to completion even if the
    /// caller goes away: callers spawn it.
    pub async fn issue(
        &self,
        role_name: &str,
        ttl: Option<Duration>,
        caller: &Caller,
        idempotency: Option<String>,
    ) -> Result<Issued, BrokerError> {
        // Asked first: a caller without the permission learns nothing,
        // not even whether the role exists.
        let grant = caller.may_issue(role_name)?;
        let role = self.role(role_name)?;
        if let (Some(grace), None) = (role.share, &idempotency) {
            if let Some(workload) = share::Workload::of(role_name, caller, &grant) {
                return self.issue_shared(workload, grace, ttl, caller, grant).await;
            }
        }
        self.issue_one(role_name, ttl, caller, grant, idempotency).await
    }

    /// A lease of its own for the caller, under `grant`.
    async fn issue_one(
        &self,
        role_name: &str,
        ttl: Option<Duration>,
        caller: &Caller,
        grant: Grant,
        idempotency: Option<String>,
    ) -> Result<Issued, BrokerError> {
        let started = std::time::Instant::now();
        let role = self.role(role_name)?;
        let ttl = match ttl {
            None => role.default_ttl,
            Some(ttl) if ttl.as_std().is_zero() => {
                return Err(BrokerError::BadRequest { message: "ttl must be longer than 0s".into() })
            }
            Some(ttl) if ttl > role.max_ttl => {
                return Err(BrokerError::BadRequest {
                    message: format!(
                        "ttl {ttl} is longer than role {role_name:?}'s max_ttl {}",
                        role.max_ttl
                    ),
                })
            }
            Some(ttl) => ttl,
        };
        let backend = &self.backends[&role.connection];
        let owner = caller.owner(&grant);
        // Taken now, given back when the lease is revoked (or here, if it
        // never reaches the store).
        self.quotas.take(&role.name, owner.policy.as_deref())?;
        let now = now_ms();
        let lease = Lease {
            id: crate::lease::new_id(&role.name),
            role: role.name.clone(),
            connection: role.connection.clone(),
            username: role.username.generate_for(&role.name, &caller.subject()),
            state: LeaseState::Pending,
            issued_at: now,
            expires_at: now.checked_add_signed(ttl.to_chrono()).ok_or_else(too_far)?,
            max_expires_at: now.checked_add_signed(role.max_ttl.to_chrono()).ok_or_else(too_far)?,
            renewable: role.capabilities.renewable,
            attempts: 0,
            last_error: None,
            owner,
            plugin_data: None,
            revoked_at: None,
            idempotency,
        };
        // Dropped when this function returns, by which time the lease is
        // active or scheduled for rollback.
        let _in_flight = InFlight::enter(self, &lease.id);
        let _lock = self.locks.lock(&lease.id).await;
        if let Err(e) = self.store.write(Write::Insert(lease.clone())).await {
            self.quotas.give_back(&lease.role, lease.owner.policy.as_deref());
            return Err(e.into());
        }
        let password = names::password(role.password_length);
        let request = CreateRequest {
            role: &role.name,
            settings: &role.settings,
            lease_id: lease.id.as_str(),
            username: &lease.username,
            password: &password,
            expires_at: lease.expires_at,
        };
        let created = match self.create_with_retry(backend, &request).await {
            Ok(created) => created,
            Err(source) => {
                metrics::issue_failed(&role.name);
                let unsettled = matches!(source, PluginError::Unavailable { .. } | PluginError::Down { .. });
                if unsettled {
                    self.unsettled.lock().unwrap().insert(lease.id.clone());
                }
                warn!(lease = %lease.id, role = %role.name, error = %source, unsettled, "issuance failed; rolling back");
                self.index.schedule(&lease.id, Utc::now(), lease.attempts);
                return Err(BrokerError::Backend { context: format!("role {role_name:?}"), source });
            }
        };
        // In whole milliseconds, as the store keeps it, so the index entry
        // made now is the one a later renewal or revocation removes.
        let expires_at =
            created.expires_at.map_or(lease.expires_at, |at| whole_ms(at).min(lease.max_expires_at));
        let activated = Write::Activate {
            id: lease.id.clone(),
            plugin_data: created.plugin_data.clone(),
            expires_at: created.expires_at.map(|_| expires_at),
        };
        match self.store.write(activated).await {
            Ok(true) => {}
            // The credential exists but its lease is not `pending` any more:
            // another node rolled it back, this one having been out of
            // touch for longer than the node timeout. That rollback may have
            // run before the credential existed, so the lease is reopened
            // and the credential taken back rather than handed out untracked.
            Ok(false) => {
                warn!(lease = %lease.id, "another node rolled this issuance back while this node was out of touch; removing the credential it made");
                if let Err(e) = self.store.write(Write::Reopen { id: lease.id.clone() }).await {
                    warn!(lease = %lease.id, error = %e, "cannot reopen a lease rolled back by another node; retrying its revocation");
                }
                self.reopened.lock().unwrap().insert(lease.id.clone());
                self.index.schedule(&lease.id, Utc::now(), expiry::ANY_ATTEMPT);
                return Err(BrokerError::Conflict {
                    id: lease.id.clone(),
                    state: "revoking",
                    message: "the lease stopped being pending while it was issued; the credential is revoked"
                        .into(),
                });
            }
            Err(e) => {
                self.index.schedule(&lease.id, Utc::now(), lease.attempts);
                return Err(e.into());
            }
        }
        self.schedule_expiry(&lease.id, expires_at, lease.attempts);
        self.schedule_warning(&lease.id, expiry::warning_at(lease.issued_at, expires_at), expires_at);
        metrics::issued(&role.name, started.elapsed());
        debug!(lease = %lease.id, role = %role.name, username = %lease.username, "issued");
        let lease =
            Lease { state: LeaseState::Active, plugin_data: created.plugin_data, expires_at, ..lease };
        Ok(Issued {
            lease,
            plugin: backend.connection.plugin.name(),
            credential: created.credential,
            shared: false,
        })
    }

    /// Issues in a task of its own, so a caller that goes away (it hung
    /// up, or its request timed out) does not cut the issuance off half-way
    /// and the lease always reaches a final state. A credential made for a
    /// caller that is gone by then is held by nobody: it is revoked at once.
    pub async fn issue_detached(
        self: &Arc<Self>,
        role: String,
        ttl: Option<Duration>,
        caller: Caller,
    ) -> Result<Issued, BrokerError> {
        self.issue_detached_with(role, ttl, caller, None).await
    }

    /// [`issue_detached`](Self::issue_detached), the lease carrying an
    /// idempotency digest.
    async fn issue_detached_with(
        self: &Arc<Self>,
        role: String,
        ttl: Option<Duration>,
        caller: Caller,
        idempotency: Option<String>,
    ) -> Result<Issued, BrokerError> {
        let (answer, delivered) = oneshot::channel();
        let me = self.clone();
        self.tasks.spawn(async move {
            let outcome = me.issue(&role, ttl, &caller, idempotency).await;
            if let Err(Ok(issued)) = answer.send(outcome) {
                if issued.shared {
                    // Held by its other holders, or let go when they are
                    // gone (share_grace after the last).
                    return;
                }
                me.revoke_undelivered(&issued.lease).await;
            }
        });
        delivered.await.map_err(|_| BrokerError::Internal {
            message: "the issuance task ended without an answer".into(),
        })?
    }

    async fn revoke_undelivered(&self, lease: &Lease) {
        metrics::undelivered(&lease.role);
        warn!(lease = %lease.id, role = %lease.role, uid = lease.owner.uid, "the caller was gone when its credential was made; revoking it");
        // A failure is recorded and retried inside, like any revocation.
        let _ = self.revoke_now(&lease.id, None).await;
    }

    async fn create_with_retry(
        &self,
        backend: &Backend,
        request: &CreateRequest<'_>,
    ) -> Result<lessor_plugin::Created, PluginError> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = {
                let _permit = backend.issuance.acquire().await.expect("semaphore never closed");
                bounded(backend.operation_timeout, backend.connection.plugin.create(request)).await
            };
            match result {
                Err(e) if e.is_transient_conflict() && started.elapsed() < CREATE_RETRY_BUDGET => {
                    metrics::transient_retry(request.role);
                    let ceiling = 5u64 << attempt.min(6);
                    let wait = rand::rng().random_range(1..=ceiling);
                    debug!(
                        lease = request.lease_id,
                        attempt,
                        wait_ms = wait,
                        "transient conflict; retrying creation"
                    );
                    tokio::time::sleep(StdDuration::from_millis(wait)).await;
                }
                other => return other,
            }
        }
    }

    /// Whether revoking a lease of `role` removes the credential in the
    /// backend; `false` for expiry-only credentials such as STS tokens,
    /// which the backend honours until they expire.
    pub fn is_revocable(&self, role: &str) -> bool {
        self.roles.get(role).is_none_or(|r| r.capabilities.revocable)
    }

    /// The plugin (`postgres`, `mysql`, `aws`) that serves `role`; `None`
    /// for an unknown role.
    pub fn role_plugin(&self, role: &str) -> Option<&'static str> {
        let role = self.roles.get(role)?;
        Some(self.backends.get(&role.connection)?.connection.plugin.name())
    }

    /// The names of every configured role.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    /// One lease's metadata.
    pub async fn get(&self, id: &LeaseId, caller: &Caller) -> Result<Lease, BrokerError> {
        let lease = self.store.get(id).await?;
        visible(id, lease, caller)
    }

    pub(crate) fn backend(&self, lease: &Lease) -> Result<&Backend, BrokerError> {
        self.backends.get(&lease.connection).ok_or_else(|| BrokerError::Backend {
            context: format!("lease {}", lease.id),
            source: PluginError::Unavailable {
                message: format!("connection {:?} is no longer configured", lease.connection),
            },
        })
    }

    pub(crate) fn lease_ref<'a>(&'a self, lease: &'a Lease) -> LeaseRef<'a> {
        let settings =
            self.roles.get(&lease.role).filter(|r| r.connection == lease.connection).map(|r| &r.settings);
        LeaseRef {
            lease_id: lease.id.as_str(),
            role: &lease.role,
            settings,
            username: &lease.username,
            plugin_data: lease.plugin_data.as_ref(),
        }
    }

    /// Frees what `lease` held against `max_leases`, if this node counted
    /// it: in a shared store each node counts the leases it issued.
    pub(crate) fn give_back_quota(&self, lease: &Lease) {
        let here = self.store.cluster().map(|c| c.node());
        if lease.owner.node.is_none() || lease.owner.node.as_deref() == here {
            self.quotas.give_back(&lease.role, lease.owner.policy.as_deref());
        }
    }

    /// Whether `id` was rolled back from an issuance with an unknown
    /// outcome and still owes its second look; forgets it either way.
    pub(crate) fn settle(&self, id: &LeaseId) -> bool {
        self.unsettled.lock().unwrap().remove(id)
    }
}

/// `lease` if the caller may touch it. One that is not the caller's is
/// answered exactly as one that does not exist: a stranger learns nothing
/// of which lease ids are live (the log says what happened).
pub(crate) fn visible(id: &LeaseId, lease: Option<Lease>, caller: &Caller) -> Result<Lease, BrokerError> {
    match lease {
        Some(lease) if caller.may_touch(&lease) => Ok(lease),
        Some(lease) => {
            info!(lease = %id, caller = %caller.who(), owner_uid = lease.owner.uid, "not the caller's lease: answered as unknown");
            Err(BrokerError::UnknownLease { id: id.to_string() })
        }
        None => Err(BrokerError::UnknownLease { id: id.to_string() }),
    }
}

fn too_far() -> BrokerError {
    BrokerError::BadRequest { message: "the lease would end too far in the future".into() }
}

/// Now, to the millisecond: the precision the store keeps, so what the API
/// answers is what a later read returns.
/// `at` without its sub-millisecond part.
fn whole_ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn now_ms() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(3)
}

/// Marks an issuance in flight for as long as it lives: counted in the
/// gauge, and its lease listed so start-up recovery leaves it alone.
struct InFlight<'a> {
    broker: &'a Broker,
    id: LeaseId,
}

impl<'a> InFlight<'a> {
    fn enter(broker: &'a Broker, id: &LeaseId) -> Self {
        metrics::issuance_started();
        broker.issuing.lock().unwrap().insert(id.clone());
        Self { broker, id: id.clone() }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.broker.issuing.lock().unwrap().remove(&self.id);
        metrics::issuance_ended();
    }
}

/// The broker is what `GET /v1/metrics` reads its scrape-time gauges from.
#[async_trait::async_trait]
impl metrics::Scrape for Broker {
    async fn lease_counts(&self) -> Result<Vec<(String, LeaseState, u64)>, String> {
        self.store.count_by_role_and_state().await.map_err(|e| e.to_string())
    }

    fn scheduled(&self) -> usize {
        Broker::scheduled(self)
    }

    fn is_ready(&self) -> bool {
        Broker::is_ready(self)
    }
}
