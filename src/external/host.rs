//! One external plugin's process over its life: started at config load,
//! watched (exit, or no answer to health checks), restarted with backoff,
//! and given back every connection it serves before it counts as running.
//!
//! The host runs on a small runtime of its own, so the config load (which
//! is synchronous) can wait on the plugin from any thread, including one
//! of a single-threaded runtime, without blocking what the call needs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lessor_plugin::proto::{self, v1, v1::plugin_client::PluginClient};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::process::{self, Process};
use crate::config::PluginConfig;

/// The first restart waits this long; each quick failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between restarts.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// A process that ran this long was healthy: the next restart is quick again.
const STABLE: Duration = Duration::from_secs(30);
/// How often a running plugin is asked whether it still answers…
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// …how long it has to answer…
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// …and after how many unanswered checks in a row it is killed.
const HEALTH_MISSES: u32 = 3;

/// Where a plugin's process stands.
#[derive(Debug, Clone)]
pub enum State {
    Running {
        client: PluginClient<Channel>,
        pid: u32,
        since: DateTime<Utc>,
    },
    /// It exited, hung or failed to start; it is started again after a
    /// delay. `reason` says what happened last.
    Restarting {
        reason: String,
        since: DateTime<Utc>,
    },
    /// The daemon is shutting down.
    Stopped,
}

/// What one connection's plugin is built from, kept to build it again
/// in every new process.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub url: Option<String>,
    pub password: Option<SecretString>,
    /// The admin user a rotated password belongs to (`use_admin_password`).
    pub admin: Option<String>,
    pub max_connections: u32,
    pub operation_timeout_ms: u64,
    pub options_json: String,
}

impl Spec {
    fn request(&self, connection: &str) -> v1::ConfigureRequest {
        v1::ConfigureRequest {
            connection: connection.to_string(),
            url: self.url.clone(),
            password: self.password.as_ref().map(|p| p.expose_secret().to_string()),
            admin_username: self.admin.clone(),
            max_connections: self.max_connections,
            operation_timeout_ms: self.operation_timeout_ms,
            options_json: self.options_json.clone(),
        }
    }
}

/// One `[plugins.NAME]`.
#[derive(Debug)]
pub struct Host {
    pub(super) shared: Arc<Shared>,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub name: String,
    pub config: PluginConfig,
    pub state: watch::Sender<State>,
    pub connections: Mutex<BTreeMap<String, Spec>>,
    pub restarts: AtomicU64,
    /// What the process said it is (`Describe`).
    pub described: Mutex<v1::DescribeResponse>,
}

impl Host {
    /// Starts `[plugins.NAME]`'s process and waits until it answers; the
    /// error says why it did not (a digest that differs, no handshake …).
    pub fn start(name: &str, config: &PluginConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("plugin-{name}"))
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start its runtime: {e}"))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            config: config.clone(),
            state: watch::Sender::new(State::Restarting { reason: "starting".into(), since: Utc::now() }),
            connections: Mutex::default(),
            restarts: AtomicU64::new(0),
            described: Mutex::default(),
        });
        let stop = CancellationToken::new();
        let host = Self { shared: shared.clone(), stop: stop.clone(), runtime: Some(runtime) };
        let process = host.wait(start_once(shared.clone()))?;
        shared.running(&process);
        host.runtime().spawn(supervise(shared, process, stop));
        Ok(host)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the host")
    }

    /// Runs `work` on the host's runtime and waits for it from this
    /// thread (the synchronous config load and `use_admin_password`).
    pub(super) fn wait<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime().spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv().expect("the host's runtime runs until the host is dropped")
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// The name and version the process gave.
    pub fn described(&self) -> (String, String) {
        let d = self.shared.described.lock().unwrap();
        (d.name.clone(), d.version.clone())
    }

    pub fn config(&self) -> &PluginConfig {
        &self.shared.config
    }

    /// Builds (or rebuilds) `connection` in the running process, and
    /// remembers it for every later one.
    pub(super) fn configure(&self, connection: &str, spec: Spec) -> Result<v1::ConfigureResponse, String> {
        self.shared.connections.lock().unwrap().insert(connection.to_string(), spec.clone());
        let shared = self.shared.clone();
        let request = spec.request(connection);
        self.wait(async move {
            let State::Running { mut client, .. } = shared.state.borrow().clone() else {
                return Err(format!("plugin {:?} is not running", shared.name));
            };
            let mut request = tonic::Request::new(request);
            request.set_timeout(shared.config.start_timeout.as_std());
            client.configure(request).await.map(|r| r.into_inner()).map_err(|s| s.message().to_string())
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop.cancel();
        let (Some(runtime), shared) = (self.runtime.take(), self.shared.clone()) else { return };
        // The supervisor closes the plugin's stdin and waits a moment for
        // it to end; the runtime goes once it has, off this thread (which
        // may be one of another runtime's, where blocking is not allowed).
        std::thread::spawn(move || {
            runtime.block_on(async {
                let mut state = shared.state.subscribe();
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    state.wait_for(|s| matches!(s, State::Stopped)),
                )
                .await;
            });
        });
    }
}

impl Shared {
    fn running(&self, process: &Process) {
        self.state.send_replace(State::Running {
            client: process.client.clone(),
            pid: process.pid,
            since: Utc::now(),
        });
        crate::metrics::plugin_up(&self.name, true);
    }

    fn down(&self, reason: String) {
        self.state.send_replace(State::Restarting { reason, since: Utc::now() });
        crate::metrics::plugin_up(&self.name, false);
    }
}

/// Starts the process, checks it speaks this protocol, and builds every
/// connection it serves.
async fn start_once(shared: Arc<Shared>) -> Result<Process, String> {
    let mut process = process::start(&shared.name, &shared.config).await?;
    let limit = shared.config.start_timeout.as_std();
    let described = tokio::time::timeout(limit, process.client.describe(v1::DescribeRequest {}))
        .await
        .map_err(|_| "no answer to Describe".to_string())?
        .map_err(|s| format!("Describe failed: {}", s.message()))?
        .into_inner();
    if described.protocol != proto::PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol version {}, lessor speaks {}",
            described.protocol,
            proto::PROTOCOL_VERSION
        ));
    }
    *shared.described.lock().unwrap() = described;
    let connections = shared.connections.lock().unwrap().clone();
    for (name, spec) in connections {
        let mut request = tonic::Request::new(spec.request(&name));
        request.set_timeout(limit);
        let answer = process
            .client
            .configure(request)
            .await
            .map_err(|s| format!("Configure of connection {name:?} failed: {}", s.message()))?
            .into_inner();
        if let Some(e) = super::configure_error(&format!("connections.{name}"), &answer) {
            return Err(format!("Configure of connection {name:?}: {e}"));
        }
    }
    Ok(process)
}

/// Watches the running process and starts a new one whenever it ends,
/// until `stop`.
async fn supervise(shared: Arc<Shared>, mut process: Process, stop: CancellationToken) {
    let name = shared.name.clone();
    let mut delay = FIRST_DELAY;
    loop {
        let started = Instant::now();
        let reason = tokio::select! {
            reason = watch(&mut process) => reason,
            () = stop.cancelled() => {
                end(process).await;
                shared.state.send_replace(State::Stopped);
                return;
            }
        };
        warn!(plugin = %name, reason = %reason, "plugin process stopped; restarting it");
        shared.down(reason);
        drop(process);
        if started.elapsed() >= STABLE {
            delay = FIRST_DELAY;
        }
        process = loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => {
                    shared.state.send_replace(State::Stopped);
                    return;
                }
            }
            delay = (delay * 2).min(MAX_DELAY);
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            crate::metrics::plugin_restarted(&name);
            match start_once(shared.clone()).await {
                Ok(process) => break process,
                Err(reason) => {
                    warn!(plugin = %name, reason = %reason, retry_in = ?delay, "plugin did not start");
                    shared.down(reason);
                }
            }
        };
        info!(plugin = %name, pid = process.pid, "plugin process restarted");
        shared.running(&process);
    }
}

/// Returns why the process stopped serving: it exited, or it stopped
/// answering health checks (and was killed).
async fn watch(process: &mut Process) -> String {
    let mut client = process.client.clone();
    let health = async {
        let mut misses = 0;
        loop {
            tokio::time::sleep(HEALTH_EVERY).await;
            let mut request = tonic::Request::new(v1::DescribeRequest {});
            request.set_timeout(HEALTH_TIMEOUT);
            match tokio::time::timeout(HEALTH_TIMEOUT, client.describe(request)).await {
                Ok(Ok(_)) => misses = 0,
                _ => misses += 1,
            }
            if misses >= HEALTH_MISSES {
                return;
            }
        }
    };
    tokio::select! {
        status = process.child.wait() => match status {
            Ok(status) => format!("it exited ({status})"),
            Err(e) => format!("cannot wait for it: {e}"),
        },
        () = health => {
            let _ = process.child.start_kill();
            let _ = process.child.wait().await;
            format!("it did not answer {HEALTH_MISSES} health checks in a row; killed")
        }
    }
}

/// Asks the process to end (its stdin closes with it), and kills it if it
/// has not within two seconds.
async fn end(mut process: Process) {
    let pid = process.pid;
    let Process { ref mut child, .. } = process;
    // SAFETY: a signal to the process we started and have not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
