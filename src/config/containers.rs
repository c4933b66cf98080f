//! `[containers]`: the container engine lessor asks who a containerised
//! caller is (its name, image, labels and Kubernetes pod), for the
//! `container_name`, `image`, `image_digest`, `label`, and `k8s_*` keys of
//! a policy's `match`.

use std::path::PathBuf;

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::Duration;

/// `[containers]`: which engine to ask, and how.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainersConfig {
    /// The engine's API: `docker` (the Docker Engine API, which Docker and
    /// Podman's `podman system service` both answer) or `containerd` (its
    /// gRPC API: Kubernetes nodes running containerd).
    #[serde(default)]
    pub engine: EngineKind,
    /// The engine's Unix socket (`/run/docker.sock`,
    /// `/run/podman/podman.sock`, `/run/containerd/containerd.sock`).
    /// lessor only reads from it.
    pub socket: PathBuf,
    /// containerd's namespace of the containers (`k8s.io`, where the
    /// kubelet's are; the default). Only with `engine = "containerd"`.
    pub namespace: Option<String>,
    /// How long what the engine said of a container is reused; a
    /// container's name, image and labels never change while it exists.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Duration,
    /// How long one question to the engine may take; an engine that does
    /// not answer in time counts as down (container keys do not match).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// The kubelet's pods directory (`/var/lib/kubelet/pods`): where the
    /// pod's service account is read from its projected token, for
    /// `k8s_service_account`. Left out: that key matches nothing. Needs
    /// `service_account_keys`.
    pub kubelet_pods_dir: Option<PathBuf>,
    /// The cluster's service-account public keys, PEM (the API server's
    /// `--service-account-key-file`, `/etc/kubernetes/pki/sa.pub` with
    /// kubeadm): a token counts only with a valid signature by one of
    /// them, unexpired. A pod can put a file named `token` of its own in a
    /// projected volume; only the API server can sign one.
    pub service_account_keys: Option<PathBuf>,
}

/// Which API the engine speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The Docker Engine API (Docker, Podman).
    #[default]
    Docker,
    /// containerd's gRPC API.
    Containerd,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Checks `[containers]`.
pub fn check(config: &ContainersConfig, errors: &mut Vec<ConfigError>) {
    if !config.socket.is_absolute() {
        errors.push(ConfigError::new(
            "containers.socket",
            format!("{:?} must be an absolute path", config.socket.display().to_string()),
        ));
    }
    if config.cache_ttl > Duration::from_secs(300) {
        errors.push(ConfigError::new(
            "containers.cache_ttl",
            format!(
                "{} is longer than 5m: a removed container's id would be answered for that long",
                config.cache_ttl
            ),
        ));
    }
    if config.timeout.as_std().is_zero() || config.timeout > Duration::from_secs(60) {
        errors.push(ConfigError::new(
            "containers.timeout",
            format!("{} is not within 1ms..=60s", config.timeout),
        ));
    }
    match (&config.namespace, config.engine) {
        (Some(_), EngineKind::Docker) => errors.push(ConfigError::new(
            "containers.namespace",
            "is containerd's: only with engine = \"containerd\"",
        )),
        (Some(ns), EngineKind::Containerd)
            if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            errors.push(ConfigError::new(
                "containers.namespace",
                format!("{ns:?} is not a containerd namespace"),
            ))
        }
        _ => {}
    }
    match (&config.kubelet_pods_dir, &config.service_account_keys) {
        (Some(_), None) => errors.push(ConfigError::new(
            "containers.service_account_keys",
            "is required with kubelet_pods_dir: a token is believed only with the cluster's signature",
        )),
        (None, Some(_)) => errors.push(ConfigError::new(
            "containers.kubelet_pods_dir",
            "is required with service_account_keys: it is where the pods' tokens are read",
        )),
        _ => {}
    }
    if let Some(keys) = &config.service_account_keys {
        if let Err(e) = std::fs::metadata(keys) {
            errors.push(ConfigError::new(
                "containers.service_account_keys",
                format!("{}: {e}", keys.display()),
            ));
        }
    }
    if let Some(dir) = &config.kubelet_pods_dir {
        if !dir.is_absolute() {
            errors.push(ConfigError::new(
                "containers.kubelet_pods_dir",
                format!("{:?} must be an absolute path", dir.display().to_string()),
            ));
        }
    }
}
