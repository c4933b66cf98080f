//! Who a containerised caller is, as its container engine says: the
//! container's name, image (reference and digest), labels and, for a
//! Kubernetes pod's container, the CRI labels the kubelet sets
//! (`io.kubernetes.pod.namespace`, `.pod.name`, `.pod.uid`,
//! `.container.name`) and the pod's service account.
//!
//! What is trusted, and why:
//! - *Which* container a caller is in comes from the kernel: the
//!   container id in the trusted part of its cgroup path
//!   ([`Identity::container_id`]), which only root (the engine) can make.
//! - *What* that container is comes from the engine, over its socket, and
//!   is believed only from a process running as root or lessor's own user
//!   (`SO_PEERCRED` on every connection): a socket planted by anyone else
//!   is answered by its planter, and refused.
//! - Nothing is guessed: a container the engine does not know (removed, or
//!   another engine's) has no attributes, and neither does any container
//!   while the engine is down or slow ([`ContainersConfig::timeout`]).
//!   Container keys then match nothing, so default deny holds; the log
//!   says when the engine goes down and when it is back.
//!
//! Answers are cached per container id for `cache_ttl` (a container's
//! name, image and labels never change while it exists), so a burst of
//! connections from one container costs one question.

mod containerd;
mod docker;
mod kubelet;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::config::{ContainersConfig, EngineKind};
use crate::policy::identity::Container;

/// The most answers kept; past it, stale ones are dropped.
const CACHE_ENTRIES: usize = 4096;

/// The engine, a cache of its answers, and whether it was last reachable.
pub struct Containers {
    engine: Engine,
    socket: PathBuf,
    cache_ttl: Duration,
    timeout: Duration,
    /// The kubelet's pods directory and the keys its tokens are checked with.
    kubelet: Option<(PathBuf, Arc<kubelet::TokenKeys>)>,
    cache: Mutex<HashMap<String, (Instant, Option<Arc<Container>>)>>,
    down: AtomicBool,
}

impl Containers {
    /// The error names the key whose file is wrong.
    pub fn new(config: &ContainersConfig) -> Result<Arc<Self>, String> {
        let kubelet = match (&config.kubelet_pods_dir, &config.service_account_keys) {
            (Some(dir), Some(keys)) => Some((
                dir.clone(),
                Arc::new(
                    kubelet::TokenKeys::load(keys)
                        .map_err(|e| format!("containers.service_account_keys: {e}"))?,
                ),
            )),
            _ => None,
        };
        Ok(Arc::new(Self {
            engine: match config.engine {
                EngineKind::Docker => Engine::Docker(docker::Docker::new(config.socket.clone())),
                EngineKind::Containerd => Engine::Containerd(containerd::Containerd::new(
                    config.socket.clone(),
                    config.namespace.clone().unwrap_or_else(|| "k8s.io".into()),
                )),
            },
            socket: config.socket.clone(),
            cache_ttl: config.cache_ttl.as_std(),
            timeout: config.timeout.as_std(),
            kubelet,
            cache: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        }))
    }

    /// What the engine says of container `id` (64 hex digits), or `None`
    /// when it does not know it or cannot be asked.
    pub async fn lookup(&self, id: &str) -> Option<Arc<Container>> {
        if let Some((at, answer)) = self.cache.lock().unwrap().get(id) {
            if at.elapsed() < self.cache_ttl {
                return answer.clone();
            }
        }
        let asked = tokio::time::timeout(self.timeout, self.ask(id)).await.unwrap_or_else(|_| {
            Err(format!("it did not answer within {:?} (containers.timeout)", self.timeout))
        });
        match asked {
            Ok(answer) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(socket = %self.socket.display(), "the container engine answers again");
                }
                let answer = answer.map(Arc::new);
                if answer.is_none() {
                    debug!(container = %id.get(..12).unwrap_or(id), "the container engine does not know this container: no container attributes");
                }
                let mut cache = self.cache.lock().unwrap();
                if cache.len() >= CACHE_ENTRIES {
                    let ttl = self.cache_ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                }
                cache.insert(id.to_string(), (Instant::now(), answer.clone()));
                answer
            }
            Err(why) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    warn!(socket = %self.socket.display(), error = %why, "cannot ask the container engine: container keys (container_name, image, label, k8s_*) match no caller until it answers");
                }
                None
            }
        }
    }

    async fn ask(&self, id: &str) -> Result<Option<Container>, String> {
        let found = match &self.engine {
            Engine::Docker(docker) => docker.inspect(id).await?,
            Engine::Containerd(containerd) => containerd.inspect(id).await?,
        };
        let Some(mut container) = found else { return Ok(None) };
        if let (Some((dir, keys)), Some(uid)) = (&self.kubelet, container.k8s_pod_uid()) {
            let (dir, keys, uid) = (dir.clone(), keys.clone(), uid.to_string());
            let namespace = container.k8s_namespace().map(str::to_string);
            container.service_account = tokio::task::spawn_blocking(move || {
                kubelet::service_account(&dir, &uid, namespace.as_deref(), &keys)
            })
            .await
            .ok()
            .flatten();
        }
        Ok(Some(container))
    }
}

enum Engine {
    Docker(docker::Docker),
    Containerd(containerd::Containerd),
}

/// The process answering on the engine's socket must be root or lessor's
/// own user (`SO_PEERCRED`): whoever answers speaks for every container.
fn check_peer(stream: &tokio::net::UnixStream) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    if peer.uid() != 0 && peer.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("the engine's socket is answered by uid {}, neither root nor lessor's user", peer.uid()),
        ));
    }
    Ok(())
}
