//! Who a caller is, beyond the kernel's `SO_PEERCRED` (uid, gid, pid): the
//! user and group names, the supplementary groups, the executable and the
//! control group (from which the systemd unit and a container id are read),
//! all from `/proc/<pid>` and the system's user database, the sources
//! SPIRE's unix, docker and k8s workload attestors read too.
//!
//! A pid can be reused once its process exits, so what `/proc/<pid>` says
//! is trusted only for a process that had started when the connection was
//! accepted and still runs as the uid the kernel gave: a process started
//! later (or under another uid) is another process, and everything but the
//! kernel's own credentials is then left out.
//!
//! Reading `/proc` and the user database can block (a process whose memory
//! map is locked, an LDAP-backed NSS): [`Identity::read`] is blocking and is
//! called on the blocking pool, never in the accept loop.

use std::ffi::CStr;

/// A caller's identity. The uid, gid and pid are the kernel's; the rest is
/// `None` (or empty) when it could not be read or was not trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Supplementary groups (`Groups:` of `/proc/<pid>/status`).
    pub groups: Vec<u32>,
    /// The names of those groups that have one.
    pub group_names: Vec<String>,
    pub exe: Option<String>,
    /// The cgroup v2 path (`0::/…` of `/proc/<pid>/cgroup`).
    pub cgroup: Option<String>,
    /// The innermost `*.service` or `*.scope` of the cgroup path.
    pub systemd_unit: Option<String>,
    /// A 64-hex-digit container id in the cgroup path (Docker, containerd,
    /// CRI-O, Podman).
    pub container_id: Option<String>,
}

impl Identity {
    /// The identity of a peer with the kernel's credentials, whose
    /// connection was accepted at `accepted_s` seconds of `CLOCK_BOOTTIME`.
    pub fn read(uid: u32, gid: u32, pid: Option<i32>, accepted_s: f64) -> Self {
        // What holds whatever `/proc` says: the kernel's credentials and
        // the names the user database gives them.
        let kernel =
            Identity { uid, gid, pid, user: user_name(uid), group: group_name(gid), ..Identity::default() };
        let Some(pid) = pid.filter(|pid| *pid > 0) else { return kernel };
        let proc = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok();
        let Some(status) = proc("status") else { return kernel };
        let started = proc("stat").as_deref().and_then(start_ticks);
        // Started after the accept, or running as another uid: a process that
        // took over the pid, not the caller.
        let same = started.is_some_and(|ticks| ticks as f64 / clock_ticks() <= accepted_s + 0.01)
            && status_uid(&status) == Some(uid);
        if !same {
            return kernel;
        }
        let cgroup = proc("cgroup").as_deref().and_then(cgroup_v2_path);
        let groups = status_groups(&status);
        let identity = Identity {
            group_names: groups.iter().filter_map(|gid| group_name(*gid)).collect(),
            groups,
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.display().to_string()),
            systemd_unit: cgroup.as_deref().and_then(systemd_unit),
            container_id: cgroup.as_deref().and_then(container_id),
            cgroup,
            ..kernel.clone()
        };
        // Checked again: the pid may have changed hands while it was read.
        if proc("stat").as_deref().and_then(start_ticks) != started {
            return kernel;
        }
        identity
    }
}

/// Seconds since boot on `CLOCK_BOOTTIME`, the clock of `/proc/<pid>/stat`'s
/// start time.
pub fn boot_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return f64::MAX;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks after boot.
/// The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The real uid (`Uid:` line, first field) of `/proc/<pid>/status`.
fn status_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

fn status_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// The path of the unified (v2) hierarchy: the `0::` line.
fn cgroup_v2_path(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

fn systemd_unit(path: &str) -> Option<String> {
    path.rsplit('/').find(|part| part.ends_with(".service") || part.ends_with(".scope")).map(str::to_string)
}

fn container_id(path: &str) -> Option<String> {
    path.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of
    // the strings `pwd` points into.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `pw_name` is a NUL-terminated string inside `buf`.
    Some(unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: as in `user_name`.
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `gr_name` is a NUL-terminated string inside `buf`.
    Some(unsafe { CStr::from_ptr(grp.gr_name) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_counted_from_the_last_parenthesis() {
        let stat =
            "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 12345 678";
        assert_eq!(start_ticks(stat), Some(987654));
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn status_gives_the_real_uid_and_the_supplementary_groups() {
        let status =
            "Name:\tapp\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t100\t100\t100\nGroups:\t4 24 27 \n";
        assert_eq!(status_uid(status), Some(1000));
        assert_eq!(status_groups(status), vec![4, 24, 27]);
        assert_eq!(status_groups("Groups:\n"), Vec::<u32>::new());
    }

    #[test]
    fn units_and_container_ids_come_from_the_cgroup_path() {
        let id = "4f1c0e2d9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let cases = [
            ("0::/system.slice/app.service\n", Some("app.service"), None),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope\n",
                Some("run-r1.scope"),
                None,
            ),
            (
                &format!("0::/system.slice/docker-{id}.scope\n") as &str,
                Some(&format!("docker-{id}.scope") as &str),
                Some(id),
            ),
            (
                &format!("12:cpu:/x\n0::/kubepods/burstable/pod1/cri-containerd-{id}.scope\n"),
                Some(&format!("cri-containerd-{id}.scope")),
                Some(id),
            ),
            (&format!("0::/docker/{id}\n"), None, Some(id)),
            ("0::/\n", None, None),
        ];
        for (cgroup, unit, container) in cases {
            let path = cgroup_v2_path(cgroup).unwrap();
            assert_eq!(systemd_unit(&path).as_deref(), unit, "{cgroup}");
            assert_eq!(container_id(&path).as_deref(), container, "{cgroup}");
        }
        assert_eq!(cgroup_v2_path("12:cpu:/x\n"), None);
    }

    #[test]
    fn this_process_reads_as_itself_and_a_later_start_is_not_trusted() {
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let pid = std::process::id() as i32;
        let me = Identity::read(uid, gid, Some(pid), boot_seconds());
        assert_eq!(me.exe, std::env::current_exe().ok().map(|p| p.display().to_string()));
        assert!(me.user.is_some(), "uid {uid} has a name in the user database");
        assert_eq!(me.user, user_name(uid));
        assert!(me.cgroup.is_some() || !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
        // A connection accepted before this process started: the pid's
        // process is not the one that connected.
        let reused = Identity::read(uid, gid, Some(pid), 0.0);
        assert_eq!(reused.exe, None);
        assert_eq!(reused.cgroup, None);
        assert!(reused.groups.is_empty());
        assert_eq!(reused.user, me.user, "names come from the kernel's uid, not /proc");
        // Another uid than the kernel's: not trusted either.
        let other = Identity::read(uid.wrapping_add(1), gid, Some(pid), boot_seconds());
        assert_eq!(other.exe, None);
    }
}
