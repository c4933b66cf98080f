//! Users and groups by name, for `[plugins.NAME] user` and `group`.

use std::ffi::CString;

/// The uid and primary gid of `name`.
pub(super) fn user(name: &str) -> Result<(u32, u32), String> {
    let c = CString::new(name).map_err(|_| format!("user {name:?} holds a NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r writes into `entry` and `buf`, both ours and
    // sized as passed; `found` points at `entry` or is null.
    unsafe {
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(c.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc != 0 || found.is_null() {
            return Err(format!("no user {name:?} on this system"));
        }
        Ok((entry.pw_uid, entry.pw_gid))
    }
}

/// The gid of group `name`.
pub(super) fn group(name: &str) -> Result<u32, String> {
    let c = CString::new(name).map_err(|_| format!("group {name:?} holds a NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `user`, with getgrnam_r.
    unsafe {
        let mut entry: libc::group = std::mem::zeroed();
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(c.as_ptr(), &mut entry, buf.as_mut_ptr(), buf.len(), &mut found);
        if rc != 0 || found.is_null() {
            return Err(format!("no group {name:?} on this system"));
        }
        Ok(entry.gr_gid)
    }
}
