//! Who is on the other end of the socket, as the kernel says (`SO_PEERCRED`):
//! uid, gid and pid, plus what `/proc/<pid>` and the user database add
//! ([`Identity`]: names, supplementary groups, executable, cgroup, systemd
//! unit, container id). Nothing the client sends can change it.
//!
//! The accept loop only asks the kernel for the credentials (one
//! `getsockopt`) and notes the time. The rest is read later, once per
//! connection, on the blocking pool: a slow `/proc` or user database must
//! not hold up accepting other connections.

use std::sync::{Arc, OnceLock};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::policy::identity::{boot_seconds, Identity};

/// The peer of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// When the connection was accepted (`CLOCK_BOOTTIME` seconds): a
    /// process that started later is not the one that connected.
    accepted_s: f64,
    /// Read on first use and shared by every request of the connection.
    identity: Arc<OnceLock<Identity>>,
}

impl PeerInfo {
    /// A peer with these credentials, accepted now.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self { uid, gid, pid, accepted_s: boot_seconds(), identity: Arc::default() }
    }

    /// The peer's identity, read from `/proc` and the user database.
    pub async fn identity(&self) -> Identity {
        if let Some(identity) = self.identity.get() {
            return identity.clone();
        }
        let (uid, gid, pid, accepted_s) = (self.uid, self.gid, self.pid, self.accepted_s);
        let identity = tokio::task::spawn_blocking(move || Identity::read(uid, gid, pid, accepted_s))
            .await
            .unwrap_or(Identity { uid, gid, pid, ..Identity::default() });
        self.identity.get_or_init(|| identity).clone()
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Self::new(cred.uid(), cred.gid(), cred.pid()),
            // Without credentials the caller is nobody: every owner check fails.
            Err(_) => {
                let nobody = Identity { uid: u32::MAX, gid: u32::MAX, ..Identity::default() };
                Self {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    pid: None,
                    accepted_s: 0.0,
                    identity: Arc::new(OnceLock::from(nobody)),
                }
            }
        }
    }
}
