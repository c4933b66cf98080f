//! Socket activation (sd_listen_fds(3)): sockets the service manager made
//! and passed in (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), served
//! instead of binding our own. The manager keeps them open across
//! restarts, so connections made while the daemon restarts wait in the
//! socket's queue and are answered by the next daemon, and the socket file
//! is the manager's: the daemon neither makes nor removes it.
//!
//! `lessor.socket` names its socket `api` (`FileDescriptorName=api`) and
//! `lessor-credentials.socket` `credentials`; a single socket passed
//! without a name is the API socket.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// The sockets the service manager passed in.
#[derive(Debug, Default)]
pub struct Inherited {
    pub api: Option<StdUnixListener>,
    pub credentials: Option<StdUnixListener>,
}

impl Inherited {
    /// Takes the passed sockets (once per process: the descriptors are
    /// then owned here). None when the daemon was not socket-activated.
    pub fn take() -> anyhow::Result<Self> {
        let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(false)
            .context("LISTEN_FDS: cannot read the sockets the service manager passed")?
            .collect();
        let mut inherited = Self::default();
        let unnamed_alone = fds.len() == 1;
        for (fd, name) in fds {
            // SAFETY: LISTEN_PID is this process, so the manager passed
            // these descriptors to it; nothing else in the process owns
            // them, and they are taken once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let slot = match name.as_str() {
                "api" => &mut inherited.api,
                "credentials" => &mut inherited.credentials,
                "" | "unknown" | "stored" if unnamed_alone => &mut inherited.api,
                other => bail!(
                    "the service manager passed a socket named {other:?}; lessor serves `api` \
                     (FileDescriptorName=api) and `credentials`"
                ),
            };
            if slot.is_some() {
                bail!("the service manager passed two sockets named {name:?}");
            }
            *slot = Some(listening_unix_stream(owned).with_context(|| format!("the socket named {name:?}"))?);
        }
        Ok(inherited)
    }
}

/// The descriptor as a listener, if it is a listening Unix stream socket.
fn listening_unix_stream(fd: OwnedFd) -> anyhow::Result<StdUnixListener> {
    use std::os::fd::AsRawFd;
    let int_opt = |option| crate::api::peer::socket_option(fd.as_raw_fd(), option);
    let domain = int_opt(libc::SO_DOMAIN).context("not a socket")?;
    let kind = int_opt(libc::SO_TYPE).context("not a socket")?;
    let listening = int_opt(libc::SO_ACCEPTCONN).context("not a socket")?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        bail!("not a listening Unix stream socket (use ListenStream= with a path)");
    }
    let listener = StdUnixListener::from(fd);
    listener.set_nonblocking(true).context("cannot make it non-blocking")?;
    Ok(listener)
}

/// The path a listener is bound to, for messages.
pub fn path_of(listener: &StdUnixListener) -> Option<PathBuf> {
    listener.local_addr().ok()?.as_pathname().map(PathBuf::from)
}
