//! Who is on the other end of the socket, as the kernel says (`SO_PEERCRED`):
//! uid, gid and pid, plus what `/proc/<pid>` and the user database add
//! ([`Identity`]: names, supplementary groups, executable, cgroup, systemd
//! unit, container id, whether it is on the host) and, with `[containers]`,
//! what the container engine says of the caller's container
//! ([`crate::containers`]). Nothing the client sends can change it.
//!
//! The identity is read when the connection is accepted, before any byte of
//! a request, and held by the connection ([`PeerInfo::accept`]). Each
//! request then checks that the process is still the one that connected,
//! running the same program ([`PeerInfo::recheck`]): a process that execs
//! another binary after connecting (or hands the socket to a child that
//! does, and exits) is refused, so nobody borrows an allowed program's
//! identity. Where the kernel has `SO_PEERPIDFD` (Linux 6.5+) the
//! connection also holds a pidfd of the process, which tells when it has
//! exited even if its pid is reused; elsewhere the start time does.
//!
//! What is left: a process that execs between its `connect` and the
//! daemon's accept is read as the program it became. `exe` alone is
//! therefore the weakest key; paired with `uid` or `systemd_unit` it only
//! narrows what those grant.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::net::UnixStream;

use crate::containers::Containers;
use crate::policy::identity::{boot_seconds, Stamp};
use crate::policy::Identity;

/// `SO_PEERPIDFD` (Linux 6.5+): a pidfd of the peer that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer of one connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Read at accept, shared by every request of the connection.
    identity: Arc<Identity>,
    /// The process and program at accept, for [`recheck`](Self::recheck).
    stamp: Option<Stamp>,
    /// A pidfd of the process that connected, where the kernel gives one.
    pidfd: Option<Arc<OwnedFd>>,
}

impl PeerInfo {
    /// The peer of a connection just accepted: its credentials, a pidfd,
    /// and its identity read on the blocking pool. `elsewhere` is why it is
    /// not in the daemon's namespaces (`None`: it is), as the accept loop
    /// read it.
    /// `containers`, when configured, says what a containerised caller's
    /// container is.
    pub async fn accept(
        stream: &UnixStream,
        elsewhere: Option<String>,
        containers: Option<&Containers>,
    ) -> Self {
        let Ok(cred) = stream.peer_cred() else { return Self::nobody() };
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let accepted_s = boot_seconds();
        let pidfd = peer_pidfd(stream).map(Arc::new);
        let read = tokio::task::spawn_blocking(move || {
            let stamp = pid.and_then(Stamp::read);
            (Identity::read_with(uid, gid, pid, accepted_s, |_| elsewhere), stamp)
        });
        let (mut identity, stamp) = read.await.unwrap_or_else(|_| {
            let unread =
                Identity { confined: Some("its process could not be read".into()), ..Identity::default() };
            (Identity { uid, gid, pid, ..unread }, None)
        });
        // The pidfd is the process that connected (the kernel's word). While
        // it runs its pid is its own, so one still running now is the
        // process read above; one that exited may have left its pid to
        // another, and is worse than none: the stamp then decides.
        let pidfd = pidfd.filter(|fd| !has_exited(fd));
        if let (Some(containers), Some(id)) = (containers, identity.container_id.as_deref()) {
            identity.container = containers.lookup(id).await;
        }
        Self { uid, gid, pid, identity: Arc::new(identity), stamp, pidfd }
    }

    /// Without credentials the caller is nobody: every owner check fails.
    fn nobody() -> Self {
        let nobody = Identity {
            uid: u32::MAX,
            gid: u32::MAX,
            confined: Some("the kernel gave no credentials".into()),
            ..Identity::default()
        };
        Self { uid: u32::MAX, gid: u32::MAX, pid: None, identity: Arc::new(nobody), stamp: None, pidfd: None }
    }

    /// A peer known only by `identity`, never re-checked: for driving the
    /// router in-process (the fuzz harness and its corpus replay). The
    /// socket's peers are always [`accept`](Self::accept)ed.
    pub fn with_identity(identity: Identity) -> Self {
        let (uid, gid, pid) = (identity.uid, identity.gid, identity.pid);
        Self { uid, gid, pid, identity: Arc::new(identity), stamp: None, pidfd: None }
    }

    /// The identity read when the connection was accepted.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the process that connected still runs the program it ran at
    /// accept; `Err` says what changed. A peer whose process could not be
    /// read at accept has only its kernel credentials, which cannot change.
    pub fn recheck(&self) -> Result<(), String> {
        let (Some(pid), Some(then)) = (self.pid, self.stamp) else { return Ok(()) };
        let exited = || format!("the process that connected (pid {pid}) has exited");
        let exe = match self.pidfd.as_deref() {
            // Held: while it runs, `pid` is that process, so its program
            // is all there is to read (and it still runs after the read).
            Some(fd) => Stamp::exe_of(pid).filter(|_| !has_exited(fd)).ok_or_else(exited)?,
            // Not held: the start time tells the process from a later one.
            None => {
                let now = Stamp::read(pid).ok_or_else(exited)?;
                if now.start_ticks != then.start_ticks {
                    return Err(exited());
                }
                now.exe
            }
        };
        if exe != then.exe {
            return Err(format!(
                "the process that connected (pid {pid}) has run another program since (exec after \
                 connect); identity is taken when the connection is accepted: connect again"
            ));
        }
        Ok(())
    }
}

/// The peer's pidfd (`SO_PEERPIDFD`), or `None` on kernels without it.
fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    let fd = socket_option(stream.as_raw_fd(), SO_PEERPIDFD).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: on success the kernel gave us a new descriptor we now own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An int-valued `SOL_SOCKET` option of the socket `fd`.
pub(crate) fn socket_option(fd: RawFd, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for the kernel to write an int into.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A pidfd polls readable once its process has exited.
fn has_exited(fd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}
