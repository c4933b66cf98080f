//! Who may do what: who a caller is ([`identity`]) and the permission
//! checks the broker and the API ask (admin actions, owning a lease), kept
//! here in one place.

pub mod identity;

pub use identity::Identity;

use crate::lease::{Lease, Owner};

/// Who is calling, from the socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    pub(crate) fn owner(self) -> Owner {
        Owner { uid: self.uid, gid: self.gid, pid: self.pid }
    }

    /// Root and the daemon's own user act on any lease.
    pub fn is_admin(self) -> bool {
        self.uid == 0 || self.uid == current_uid()
    }

    pub fn may_touch(self, lease: &Lease) -> bool {
        self.is_admin() || lease.owner.uid == self.uid
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
