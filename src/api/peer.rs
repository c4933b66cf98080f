//! Who is on the other end of the socket, as the kernel says (`SO_PEERCRED`):
//! uid, gid and pid, plus the executable behind the pid. Nothing the client
//! sends can change it.
//!
//! The accept loop only asks the kernel for the credentials (one
//! `getsockopt`). The executable is read from `/proc` later, once per
//! connection, on the blocking pool: a slow `/proc` must not hold up
//! accepting other connections.

use std::sync::{Arc, OnceLock};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use crate::broker::Caller;

/// The peer of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// `/proc/<pid>/exe`, read on first use and shared by every request of
    /// the connection.
    exe: Arc<OnceLock<Option<String>>>,
}

impl PeerInfo {
    /// A peer with these credentials; its executable is read when asked for.
    pub fn new(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        Self { uid, gid, pid, exe: Arc::default() }
    }

    pub fn caller(&self) -> Caller {
        Caller { uid: self.uid, gid: self.gid, pid: self.pid }
    }

    /// The peer's executable, when it can be read.
    pub async fn exe(&self) -> Option<String> {
        if let Some(exe) = self.exe.get() {
            return exe.clone();
        }
        let pid = self.pid?;
        let exe = tokio::task::spawn_blocking(move || {
            std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string())
        })
        .await
        .ok()
        .flatten();
        self.exe.get_or_init(|| exe).clone()
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Self::new(cred.uid(), cred.gid(), cred.pid()),
            // Without credentials the caller is nobody: every owner check fails.
            Err(_) => Self { uid: u32::MAX, gid: u32::MAX, pid: None, exe: Arc::new(OnceLock::from(None)) },
        }
    }
}
