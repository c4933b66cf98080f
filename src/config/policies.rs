//! `[[policies]]` and `server.admins`: who may do what (DESIGN §4), as
//! written. `crate::policy` compiles them (`Policies::from_config`), so a
//! typo is an error at load rather than a silent deny.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// `[[policies]]`: a set of identities and what they may do.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Names the policy in leases (`owner.policy`), logs and audit records.
    pub name: String,
    /// Who the policy is for: every key given must match the caller.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// `creds:<role glob>`, `static:<account glob>`, `rotate:<account glob>`
    /// or `admin`.
    pub allow: Vec<String>,
    /// The most live leases all callers under this policy may hold.
    pub max_leases: Option<usize>,
}

/// The `match` of a policy. Globs: `*`, `?`, `[…]`, `{a,b}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    pub uid: Option<u32>,
    /// User name glob.
    pub user: Option<String>,
    /// Primary or supplementary gid.
    pub gid: Option<u32>,
    /// Primary or supplementary group name glob.
    pub group: Option<String>,
    /// Executable path glob (`/proc/<pid>/exe`); `*` stays within a segment.
    pub exe: Option<String>,
    /// systemd unit glob (`web.service`, `run-*.scope`): a unit of the
    /// system manager. A unit a user made below its own
    /// `user@UID.service` is never one (see `user_unit`).
    pub systemd_unit: Option<String>,
    /// Glob of a unit of the caller's own user manager (below
    /// `user@UID.service`, UID being the caller's uid): the user names it,
    /// so pair it with `user` or `uid`.
    pub user_unit: Option<String>,
    /// cgroup v2 path glob (`/system.slice/web.service`); `*` stays within
    /// a segment. Only the part of the path root made counts: a delegated
    /// subtree's own directories are left out.
    pub cgroup: Option<String>,
    /// `true`: only callers on the host (the daemon's pid and user
    /// namespaces, outside any container's cgroup); `false`: only callers
    /// elsewhere (in a container).
    pub host: Option<bool>,
    /// Glob of the caller's container's name, as the engine
    /// (`[containers]`) says. Every container key needs the engine: a
    /// caller whose container it does not know, or while it is down,
    /// matches none of them.
    pub container_name: Option<String>,
    /// Glob of the image reference the container was made from
    /// (`registry.example.com/billing/*`); `*` stays within a segment,
    /// `**` crosses them.
    pub image: Option<String>,
    /// The image's digest (`sha256:…`), or a glob of it.
    pub image_digest: Option<String>,
    /// Globs of the container's labels' values, by label
    /// (`label.app = "billing"`); every one given must match.
    #[serde(default)]
    pub label: BTreeMap<String, String>,
    /// Glob of the pod's Kubernetes namespace (the CRI label
    /// `io.kubernetes.pod.namespace`).
    pub k8s_namespace: Option<String>,
    /// Glob of the pod's name (`io.kubernetes.pod.name`).
    pub k8s_pod: Option<String>,
    /// Glob of the pod's service account (read from the pod's projected
    /// token, with `containers.kubelet_pods_dir`).
    pub k8s_service_account: Option<String>,
    /// Glob of the container's name in its pod
    /// (`io.kubernetes.container.name`).
    pub k8s_container: Option<String>,
}

/// An entry of `server.admins`: a uid, a user name, or a table of the
/// same keys as a policy's `match` (`{ user = "root", cgroup =
/// "/system.slice/*" }`). Each holds on the host only unless it says
/// `host = false`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AdminConfig {
    Uid(u32),
    User(String),
    Match(MatchConfig),
}
