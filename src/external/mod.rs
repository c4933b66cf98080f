//! External plugins: backends served by an executable of their own,
//! written in any language, over the plugin protocol
//! (`schemas/proto/lessor/plugin/v1/plugin.proto`, gRPC on a private Unix
//! socket).
//!
//! [`Hosts`] starts each `[plugins.NAME]` at config load ([`host`]: the
//! digest checked, the handshake read, the peer checked, the process
//! restarted with backoff when it exits or hangs); a connection naming one
//! gets a [`Remote`], which implements the same `lessor_plugin::Plugin`
//! trait as a built-in plugin, so the broker's code paths are the same
//! for both.

mod host;
mod process;
mod remote;
mod users;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use lessor_plugin::ConfigError;

use crate::config::PluginConfig;

pub use host::{Host, State};
pub use remote::Remote;

/// Every external plugin of a config, running.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    hosts: BTreeMap<String, Arc<Host>>,
}

impl Hosts {
    /// Starts each plugin; one that cannot start is an error at
    /// `plugins.NAME` saying why (its digest differs, it printed no
    /// handshake, …).
    pub fn start(plugins: &BTreeMap<String, PluginConfig>) -> (Self, Vec<ConfigError>) {
        let mut hosts = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, config) in plugins {
            match Host::start(name, config) {
                Ok(host) => {
                    hosts.insert(name.clone(), Arc::new(host));
                }
                Err(e) => errors.push(ConfigError::new(format!("plugins.{name}"), e)),
            }
        }
        (Self { hosts }, errors)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Host>> {
        self.hosts.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.hosts.values()
    }
}

/// `name` as a `&'static str` (the trait's `Plugin::name`): each distinct
/// name is leaked once per process, and configs name few plugins.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock().unwrap();
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A list of `'static` names, leaked once per distinct list.
fn intern_list(list: Vec<&'static str>) -> &'static [&'static str] {
    static LISTS: OnceLock<Mutex<BTreeSet<&'static [&'static str]>>> = OnceLock::new();
    let mut lists = LISTS.get_or_init(Mutex::default).lock().unwrap();
    if let Some(known) = lists.get(list.as_slice()) {
        return known;
    }
    let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    lists.insert(leaked);
    leaked
}

/// A plugin's config errors as one: the first one's key, every message.
fn joined(errors: &[lessor_plugin::proto::v1::ConfigError]) -> Option<ConfigError> {
    let (first, more) = errors.split_first()?;
    let mut message = first.message.clone();
    for e in more {
        message.push_str(&format!("; {}: {}", e.key, e.message));
    }
    Some(ConfigError::new(first.key.clone(), message))
}

/// Every plugin a config uses, built-in and external, for `lessor plugin
/// list` and the admin view of `GET /v1/health`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Each plugin's name, with its connections and their plugin values.
    plugins: BTreeMap<String, Vec<Using>>,
    hosts: Hosts,
}

/// A connection's name and its plugin value.
type Using = (String, Arc<dyn lessor_plugin::Plugin>);

/// One plugin as `GET /v1/plugins` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub name: String,
    /// `built-in` or `external`.
    pub kind: &'static str,
    /// What the plugin calls itself (an external one running a built-in
    /// plugin out of process says `postgres`, say).
    pub describes_as: String,
    pub version: String,
    /// `running`, `restarting` or `stopped` (built-in plugins: `running`).
    pub state: &'static str,
    /// Why an external plugin is restarting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub restarts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The pinned digest of an external plugin's executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub connections: Vec<String>,
    /// What it does beyond create and revoke, as its first connection
    /// says: `renew`, `revoke`, `revoke_batch`, `static:STRATEGY`.
    pub capabilities: Vec<String>,
}

impl Catalog {
    pub fn new<'a>(
        connections: impl IntoIterator<Item = (&'a String, &'a Arc<dyn lessor_plugin::Plugin>)>,
        hosts: &Hosts,
    ) -> Self {
        let mut plugins: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for host in hosts.iter() {
            plugins.entry(host.name().to_string()).or_default();
        }
        for (name, plugin) in connections {
            plugins.entry(plugin.name().to_string()).or_default().push((name.clone(), plugin.clone()));
        }
        Self { plugins, hosts: hosts.clone() }
    }

    /// Each plugin's state now.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.plugins
            .iter()
            .map(|(name, connections)| {
                let capabilities =
                    connections.first().map(|(_, p)| capability_names(p.as_ref())).unwrap_or_default();
                let mut status = PluginStatus {
                    name: name.clone(),
                    kind: "built-in",
                    describes_as: name.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    state: "running",
                    reason: None,
                    restarts: 0,
                    pid: None,
                    command: None,
                    sha256: None,
                    connections: connections.iter().map(|(c, _)| c.clone()).collect(),
                    capabilities,
                };
                if let Some(host) = self.hosts.get(name) {
                    let (describes_as, version) = host.described();
                    status.kind = "external";
                    status.describes_as = describes_as;
                    status.version = version;
                    status.restarts = host.restarts();
                    status.command = Some(host.config().command.display().to_string());
                    status.sha256 = Some(host.config().sha256.to_ascii_lowercase());
                    match host.state() {
                        State::Running { pid, .. } => status.pid = Some(pid),
                        State::Restarting { reason, .. } => {
                            status.state = "restarting";
                            status.reason = Some(reason);
                        }
                        State::Stopped => status.state = "stopped",
                    }
                }
                status
            })
            .collect()
    }
}

/// A plugin's capabilities as words.
fn capability_names(plugin: &dyn lessor_plugin::Plugin) -> Vec<String> {
    let c = plugin.capabilities();
    let mut names = Vec::new();
    if c.renewable {
        names.push("renew".to_string());
    }
    if c.revocable {
        names.push("revoke".to_string());
    }
    if plugin.revokes_in_batches() {
        names.push("revoke_batch".to_string());
    }
    names.extend(plugin.static_strategies().iter().map(|s| format!("static:{s}")));
    names
}

/// A `ConfigureResponse`'s problems as one config error.
pub(super) fn configure_error(
    key: &str,
    answer: &lessor_plugin::proto::v1::ConfigureResponse,
) -> Option<ConfigError> {
    if let Some(e) = joined(&answer.config_errors) {
        return Some(e);
    }
    answer.error.as_ref().map(|e| ConfigError::new(key, e.message.clone()))
}
