//! Who is on the other end of the socket, as the kernel says (`SO_PEERCRED`):
//! uid, gid and pid, plus the executable behind the pid. Nothing the client
//! sends can change it.

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
    /// `/proc/<pid>/exe`, when it can be read.
    pub exe: Option<String>,
}

impl PeerInfo {
    pub fn caller(&self) -> Caller {
        Caller { uid: self.uid, gid: self.gid, pid: self.pid }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => {
                let pid = cred.pid();
                let exe = pid.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
                Self { uid: cred.uid(), gid: cred.gid(), pid, exe: exe.map(|p| p.display().to_string()) }
            }
            // Without credentials the caller is nobody: every owner check fails.
            Err(_) => Self { uid: u32::MAX, gid: u32::MAX, pid: None, exe: None },
        }
    }
}
