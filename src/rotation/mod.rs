//! Static accounts: long-lived users whose passwords lessor owns and
//! rotates in phases (DESIGN §7), on a schedule and when an operator says so.
//!
//! A rotation follows AWS Secrets Manager's staging labels: a `pending`
//! secret is created (and stored, sealed), set in the backend, tested by
//! logging in with it, then promoted to `current`; the credential it
//! replaces becomes `previous`, keeps working for the overlap, and is then
//! retired. Each phase is a durable write before the next backend step, and
//! each step is safe to repeat, so a crash at any instant resumes where it
//! stopped ([`phases`]).
//!
//! - [`seal`]: the AEAD that keeps the secrets in the store unreadable;
//! - [`claim`]: the account's claim in the store, renewed while a rotation
//!   runs, which every write of the account's state is fenced by;
//! - [`phases`]: one account's rotation, retirement and failure handling;
//! - this module: the [`Rotator`] the API calls, and the scheduler loop.

mod claim;
mod phases;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use lessor_client::types::{RotationState, StaticCredential, StaticInfo};
use lessor_plugin::{Plugin, PluginError};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Duration, StaticAccount, Strategy};
use crate::events::{Event, Events};
use crate::policy::Caller;
use crate::seal::{SealError, Sealer};
use crate::setup::Setup;
use crate::store::{LeaseStore, StaticRecord, StoreError};

/// How long the scheduler waits before looking again at an account whose
/// due rotation another node has claimed.
const CLAIMED_ELSEWHERE: StdDuration = StdDuration::from_secs(1);

/// Where a connection's own admin credential is kept among the static
/// accounts: `connection:NAME` (no static account name has a `:`).
const ROOT_PREFIX: &str = "connection:";

/// Whether `account` is a connection's admin credential (`rotate-root`).
fn is_root(account: &StaticAccount) -> bool {
    account.name.starts_with(ROOT_PREFIX)
}

/// Why a static-account operation failed. Each variant maps to one status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// No static account of that name is configured (404).
    #[error("unknown static account {name:?}")]
    UnknownAccount { name: String },
    /// No connection of that name is configured (404).
    #[error("unknown connection {name:?}")]
    UnknownConnection { name: String },
    /// The request is malformed (400).
    #[error("{message}")]
    BadRequest { message: String },
    /// No policy grants the caller this (403).
    #[error(transparent)]
    Denied(#[from] crate::policy::Denied),
    /// A rotation of the account is running already (409).
    #[error("a rotation of static account {name:?} is in progress")]
    InProgress { name: String },
    /// This run's claim on the account lapsed and was taken over (another
    /// node rotates it now); the run stopped without another step (409).
    #[error("the rotation of static account {name:?} stopped: {holder} lost its claim on it to another node or run")]
    ClaimLost { name: String, holder: String },
    /// The account has no credential yet: its first rotation has not
    /// completed (503).
    #[error("static account {name:?} has no credential yet: its first rotation has not completed{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NotReady { name: String, last_error: Option<String> },
    /// The backend failed (502).
    #[error("static account {name:?}: {source}")]
    Backend { name: String, source: PluginError },
    /// The stored secret does not open with this key (500).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RotationError {
    /// The HTTP status and the machine-readable code for this error.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            Self::UnknownAccount { .. } => (404, "unknown_static_account"),
            Self::UnknownConnection { .. } => (404, "unknown_connection"),
            Self::BadRequest { .. } => (400, "bad_request"),
            Self::Denied(_) => (403, "forbidden"),
            Self::InProgress { .. } => (409, "rotation_in_progress"),
            Self::ClaimLost { .. } => (409, "rotation_claim_lost"),
            Self::NotReady { .. } => (503, "not_ready"),
            Self::Backend { .. } => (502, "backend_failed"),
            Self::Seal(_) => (500, "seal_failed"),
            Self::Store(_) => (503, "store_unavailable"),
        }
    }
}

/// A connection's admin credential after `rotate-root` (never the password).
#[derive(Debug)]
pub struct RootView {
    pub connection: String,
    pub username: String,
    pub version: u64,
    pub rotated_at: Option<DateTime<Utc>>,
}

/// What an operator asked for.
#[derive(Debug, Clone)]
pub struct OperatorRequest {
    pub reason: Option<String>,
    pub overlap: Option<Duration>,
}

/// Runs the rotations of every static account.
#[derive(Debug)]
pub struct Rotator {
    accounts: BTreeMap<String, StaticAccount>,
    /// Each connection's admin credential as an account of its own (a
    /// `single` one, rotated only by `rotate-root`), by connection.
    roots: BTreeMap<String, StaticAccount>,
    plugins: HashMap<String, Arc<dyn Plugin>>,
    store: Arc<dyn LeaseStore>,
    sealer: Option<Arc<Sealer>>,
    /// Accounts whose rotation runs in this process now.
    running: Mutex<HashSet<String>>,
    /// Wakes the scheduler when something it waits for may have changed.
    wake: Notify,
    events: Events,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Where rotations, retirements and their failures are recorded.
    pub(crate) audit: crate::audit::Audit,
    /// Who holds rotation claims in the store for this daemon: its node
    /// id. It is the same across restarts, so a crashed run's claim is
    /// taken back at once (with a new token, which fences the old run off); in a shared store, each node has its own, so
    /// one node runs each account's rotation.
    holder: String,
    /// How long a rotation's claim lasts unless renewed (the node
    /// timeout: a node out of touch for that long is taken for dead).
    claim_ttl: StdDuration,
}

impl Rotator {
    pub fn new(
        setup: &Setup,
        store: Arc<dyn LeaseStore>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        events: Events,
        audit: crate::audit::Audit,
    ) -> Arc<Self> {
        let config = &setup.config;
        let plugins = setup.connections.iter().map(|(name, c)| (name.clone(), c.plugin.clone())).collect();
        let roots = setup
            .connections
            .iter()
            .filter_map(|(name, connection)| {
                let admin = connection.plugin.admin_username()?;
                // A key-based admin credential (AWS) is rotated as a key;
                // one that can hold two passwords keeps the old one until
                // lessor's own connections use the new.
                let dual = connection.plugin.static_strategies().contains(&Strategy::DualPassword.as_str());
                let strategy = match connection.plugin.admin_key_id() {
                    Some(_) => Strategy::AccessKey,
                    None if dual => Strategy::DualPassword,
                    None => Strategy::Single,
                };
                let account = StaticAccount {
                    name: format!("{ROOT_PREFIX}{name}"),
                    connection: name.clone(),
                    strategy,
                    usernames: vec![admin],
                    schedule: crate::config::RotationSchedule::Manual,
                    window: None,
                    overlap: Duration::ZERO,
                    jitter: Duration::ZERO,
                    password_length: 32,
                };
                Some((name.clone(), account))
            })
            .collect();
        Arc::new(Self {
            accounts: config.static_accounts.clone(),
            roots,
            plugins,
            store,
            sealer: setup.sealer.clone(),
            running: Mutex::default(),
            wake: Notify::new(),
            events,
            audit,
            shutdown,
            tasks,
            holder: config.server.node(),
            claim_ttl: config.server.node_timeout.as_std(),
        })
    }

    /// Usernames of every static account on `connection`, which tidy must
    /// never list nor drop.
    pub fn usernames_on(&self, connection: &str) -> HashSet<String> {
        self.accounts
            .values()
            .filter(|a| a.connection == connection)
            .flat_map(|a| a.usernames.iter().cloned())
            .collect()
    }

    fn account(&self, name: &str) -> Result<&StaticAccount, RotationError> {
        self.accounts.get(name).ok_or_else(|| RotationError::UnknownAccount { name: name.to_string() })
    }

    fn sealer(&self) -> &Sealer {
        // Validation refuses static accounts without a seal key.
        self.sealer.as_deref().expect("static accounts come with a seal key")
    }

    /// The names of every static account.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.accounts.keys().map(String::as_str)
    }

    /// The plugin (`postgres`, `mysql`, `aws`) and schedule of an account,
    /// for the Vault API's paths and fields; `None` for an unknown name.
    pub fn account_kind(&self, name: &str) -> Option<(&'static str, &crate::config::RotationSchedule)> {
        let account = self.accounts.get(name)?;
        Some((self.plugins.get(&account.connection)?.name(), &account.schedule))
    }

    /// The plugin of a connection whose admin credential `rotate-root`
    /// rotates; `None` for an unknown connection.
    pub fn connection_plugin(&self, connection: &str) -> Option<&'static str> {
        self.plugins.get(connection).map(|p| p.name())
    }

    /// The event that tells watchers where `record` stands now.
    fn rotated_event(record: &StaticRecord) -> Event {
        Event::Rotated(record.rotation())
    }

    /// The account's current credential and where its rotation stands.
    pub async fn get(&self, name: &str, caller: &Caller) -> Result<StaticInfo, RotationError> {
        // Asked first: a caller without the permission learns nothing,
        // not even whether the account exists.
        caller.may_read_static(name)?;
        self.view(name).await
    }

    /// The account's credential (with its secret: an answer that must not
    /// show it takes it out, `StaticInfo::without_secret`) and state, for a
    /// caller already allowed.
    async fn view(&self, name: &str) -> Result<StaticInfo, RotationError> {
        let account = self.account(name)?;
        let record = self.store.static_get(name).await?.unwrap_or_else(|| StaticRecord::new(name));
        let Some(current) = &record.current else {
            return Err(RotationError::NotReady { name: name.to_string(), last_error: record.last_error });
        };
        let password = self
            .sealer()
            .open(&phases::seal_context(name, record.version, &current.username), &current.sealed)?;
        let username = Some(current.username.clone());
        let credential = match account.strategy {
            Strategy::AccessKey => StaticCredential {
                access_key_id: username,
                secret_access_key: Some(password),
                ..StaticCredential::default()
            },
            Strategy::Single | Strategy::Alternating | Strategy::DualPassword => {
                StaticCredential { username, password: Some(password), ..StaticCredential::default() }
            }
        };
        Ok(StaticInfo {
            name: name.to_string(),
            strategy: account.strategy.as_str().to_string(),
            credential,
            version: record.version,
            rotated_at: record.rotated_at,
            next_rotation_at: record.next_rotation_at,
            previous_username: record.previous_username.clone(),
            previous_valid_until: record.previous_valid_until,
            schedule: account.schedule.describe(),
            rotation: RotationState {
                in_progress: record.pending.as_ref().map(|p| p.phase.as_str().to_string()),
                failures: record.failures,
                last_error: record.last_error,
            },
        })
    }

    /// An operator's rotation, now. The reason is required when the
    /// previous credential is to stop working at once (`overlap` 0: an
    /// emergency). Runs in a task of its own, so a caller that goes away
    /// does not stop it half-way (and a crash resumes it anyway).
    pub async fn rotate(
        self: &Arc<Self>,
        name: &str,
        request: OperatorRequest,
        caller: &Caller,
    ) -> Result<StaticInfo, RotationError> {
        caller.may_rotate(name)?;
        let account = self.account(name)?.clone();
        let overlap = match account.strategy {
            Strategy::Single => Duration::ZERO,
            Strategy::Alternating | Strategy::DualPassword | Strategy::AccessKey => {
                request.overlap.unwrap_or(account.overlap)
            }
        };
        if overlap > crate::config::TEN_YEARS {
            return Err(RotationError::BadRequest {
                message: format!("overlap {overlap} is longer than ten years"),
            });
        }
        let reason = request.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(RotationError::BadRequest { message: "reason is longer than 1024 bytes".into() });
        }
        // An emergency: the previous credential is to stop working at once.
        let emergency = match account.strategy {
            Strategy::Alternating | Strategy::DualPassword | Strategy::AccessKey => {
                overlap.as_std().is_zero()
            }
            Strategy::Single => request.overlap.is_some_and(|o| o.as_std().is_zero()),
        };
        if emergency && reason.is_none() {
            return Err(RotationError::BadRequest {
                message: "a rotation that ends the previous credential at once (overlap 0s) needs a reason, \
                          e.g. {\"reason\":\"laptop stolen\"}; it is recorded in the log"
                    .into(),
            });
        }
        let _running = self.enter(name)?;
        let (answer, outcome) = oneshot::channel();
        let me = self.clone();
        let trigger = phases::Trigger::Operator { reason, overlap };
        self.tasks.spawn(async move {
            let _ = answer.send(me.run(&account, trigger).await);
            drop(_running);
            // Whatever happened, what is due next may have changed.
            me.wake.notify_one();
        });
        outcome.await.unwrap_or_else(|_| Err(RotationError::InProgress { name: name.to_string() }))?;
        // The answer holds no password (the API leaves it out), so a
        // caller allowed to rotate but not to read sees the new version.
        self.view(name).await
    }

    /// Rotates `connection`'s own admin password: set, tested by logging
    /// in, stored sealed, then used for every new admin connection. Nobody
    /// can read it through the API afterwards; it survives restarts (the
    /// stored copy wins over `password_file`).
    pub async fn rotate_root(
        self: &Arc<Self>,
        connection: &str,
        caller: &Caller,
    ) -> Result<RootView, RotationError> {
        caller.require_admin("rotate a connection's admin credential")?;
        let account = self
            .roots
            .get(connection)
            .ok_or_else(|| match self.plugins.contains_key(connection) {
                true => RotationError::BadRequest {
                    message: format!(
                        "connection {connection:?}: its plugin cannot rotate its admin credential"
                    ),
                },
                false => RotationError::UnknownConnection { name: connection.to_string() },
            })?
            .clone();
        if self.sealer.is_none() {
            return Err(RotationError::BadRequest {
                message: "rotate-root needs server.seal_key_file: the new admin password is stored sealed"
                    .into(),
            });
        }
        let _running = self.enter(&account.name)?;
        let (answer, outcome) = oneshot::channel();
        let me = self.clone();
        let trigger =
            phases::Trigger::Operator { reason: Some("rotate-root".into()), overlap: Duration::ZERO };
        let run_account = account.clone();
        self.tasks.spawn(async move {
            let _ = answer.send(me.run(&run_account, trigger).await);
            drop(_running);
            me.wake.notify_one();
        });
        outcome.await.unwrap_or_else(|_| Err(RotationError::InProgress { name: account.name.clone() }))?;
        let record =
            self.store.static_get(&account.name).await?.unwrap_or_else(|| StaticRecord::new(&account.name));
        Ok(RootView {
            connection: connection.to_string(),
            username: account.usernames[0].clone(),
            version: record.version,
            rotated_at: record.rotated_at,
        })
    }

    /// At start-up: a connection whose admin password was rotated logs in
    /// with the stored one, not the one in `password_file`/`password_env`.
    pub async fn restore_roots(&self) {
        for (connection, account) in &self.roots {
            if let Err(e) = self.restore_root(connection, account).await {
                warn!(connection = %connection, error = %e, "cannot use the rotated admin password from the store; the config's is used");
            }
        }
    }

    async fn restore_root(&self, connection: &str, account: &StaticAccount) -> Result<(), RotationError> {
        let Some(record) = self.store.static_get(&account.name).await? else { return Ok(()) };
        let Some(current) = record.current.as_ref().filter(|_| record.version > 0) else { return Ok(()) };
        let Some(sealer) = self.sealer.as_deref() else {
            warn!(connection = %connection, "the admin password was rotated, but server.seal_key_file is not set: using password_file");
            return Ok(());
        };
        let context = phases::seal_context(&account.name, record.version, &current.username);
        let password = sealer.open(&context, &current.sealed)?;
        self.plugins[connection]
            .use_admin_password(&current.username, &password)
            .map_err(|source| RotationError::Backend { name: account.name.clone(), source })?;
        info!(connection = %connection, version = record.version, "using the rotated admin password from the store (it wins over password_file and password_env)");
        Ok(())
    }

    /// Marks `name` running in this process; 409 when it is already.
    fn enter(self: &Arc<Self>, name: &str) -> Result<Running, RotationError> {
        if !self.running.lock().unwrap().insert(name.to_string()) {
            return Err(RotationError::InProgress { name: name.to_string() });
        }
        Ok(Running { rotator: self.clone(), name: name.to_string() })
    }

    /// Starts the scheduler: every account's due work (a first rotation, a
    /// rotation interrupted by a crash, a scheduled one, a previous
    /// credential whose overlap ended) runs when it falls due.
    pub fn start(self: &Arc<Self>) {
        if self.accounts.is_empty() && self.roots.is_empty() {
            return;
        }
        let me = self.clone();
        self.tasks.spawn(async move { me.schedule_loop().await });
    }

    async fn schedule_loop(self: Arc<Self>) {
        loop {
            let now = Utc::now();
            let mut next = now + chrono::Duration::hours(1);
            for account in self.accounts.values().chain(self.roots.values()) {
                if self.running.lock().unwrap().contains(&account.name) {
                    continue;
                }
                let record = match self.store.static_get(&account.name).await {
                    Ok(record) => record.unwrap_or_else(|| StaticRecord::new(&account.name)),
                    Err(e) => {
                        warn!(account = %account.name, error = %e, "cannot read the static account's state; retrying");
                        next = next.min(now + chrono::Duration::seconds(5));
                        continue;
                    }
                };
                if let Some(at) = record.rotated_at {
                    crate::metrics::static_last_rotation(&account.name, at);
                }
                // An admin credential rotates only when asked; a rotation of
                // one left half-way is resumed.
                if is_root(account) && record.pending.is_none() && record.previous_username.is_none() {
                    continue;
                }
                match phases::due_at(&record) {
                    Some(at) if at <= now => {
                        let Ok(running) = self.enter(&account.name) else { continue };
                        let me = self.clone();
                        let account = account.clone();
                        self.tasks.spawn(async move {
                            // Failures are recorded and rescheduled inside.
                            if let Err(RotationError::InProgress { .. } | RotationError::ClaimLost { .. }) =
                                me.run(&account, phases::Trigger::Due).await
                            {
                                // Another node runs it (a shared store): look
                                // again once it has had time to finish.
                                tokio::select! {
                                    _ = tokio::time::sleep(CLAIMED_ELSEWHERE) => {}
                                    _ = me.shutdown.cancelled() => {}
                                }
                            }
                            drop(running);
                            me.wake.notify_one();
                        });
                    }
                    Some(at) => next = next.min(at),
                    None => {}
                }
            }
            let wait = (next - Utc::now()).to_std().unwrap_or(StdDuration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// Marks an account's rotation running in this process for as long as it
/// lives.
struct Running {
    rotator: Arc<Rotator>,
    name: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.rotator.running.lock().unwrap().remove(&self.name);
    }
}
