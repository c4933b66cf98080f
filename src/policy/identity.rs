//! Who a caller is, beyond the kernel's `SO_PEERCRED` (uid, gid, pid): the
//! user and group names, the supplementary groups, the executable, the
//! control group (and the systemd unit and container id in it) and whether
//! the caller stands on the host, in the daemon's own namespaces, all from
//! `/proc/<pid>`, the cgroup file system and the user database, the sources
//! SPIRE's unix, systemd, docker and k8s workload attestors read too.
//!
//! Every attribute is one the caller can neither choose nor borrow:
//! - A pid can be reused once its process exits, so what `/proc/<pid>` says
//!   is trusted only for a process that had started when the connection was
//!   accepted and still runs as the uid the kernel gave; otherwise
//!   everything but the kernel's own credentials is left out.
//! - A cgroup path is the caller's to extend wherever the tree was
//!   delegated to it (systemd's `user@UID.service`, a `Delegate=yes`
//!   service): any user may `mkdir batch-x.service` there. So the path
//!   counts only down to the first directory that is not root's
//!   ([`CgroupView`]): a component is trusted when its parent directory is
//!   owned by root and writable by nobody else. `systemd_unit` is the
//!   innermost unit of that trusted part, a unit the system manager made.
//!   Below `user@UID.service` the user's own manager names units: the
//!   innermost of those is `user_unit`, set only when UID is the caller's
//!   own uid.
//! - Root in a container is uid 0 to the kernel. [`Identity::confined`] says
//!   why a caller is not on the host: another pid or user namespace than
//!   the daemon's, or a container's cgroup. The default admins are admins
//!   only on the host.
//!
//! Reading `/proc` and the user database can block (a process whose memory
//! map is locked, an LDAP-backed NSS): [`Identity::read`] is blocking and is
//! called on the blocking pool, never in the accept loop.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

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
    /// The executable's path. A binary replaced on disk since the process
    /// started (a package upgrade) keeps its path here; see `exe_deleted`.
    pub exe: Option<String>,
    /// The kernel shows the executable as ` (deleted)`: the file the
    /// process runs is no longer at `exe`.
    pub exe_deleted: bool,
    /// The trusted part of the cgroup v2 path (see the module docs).
    pub cgroup: Option<String>,
    /// The innermost unit (`*.service`, `*.scope`) of the trusted cgroup
    /// path: one the system manager made.
    pub systemd_unit: Option<String>,
    /// The innermost unit below the caller's own `user@UID.service`: a unit
    /// of the caller's user manager, named by the caller.
    pub user_unit: Option<String>,
    /// The 64-hex-digit id of the caller's container (Docker, containerd,
    /// CRI-O, Podman): the outermost one in the trusted part of the cgroup
    /// path, where only root (the engine) makes directories. A process in
    /// a container may make cgroups below its own, of any name; they are
    /// inside its container's and never change which one it is.
    pub container_id: Option<String>,
    /// What the container engine says of that container; `None` when no
    /// engine is configured, the engine does not know the id, or it did not
    /// answer.
    pub container: Option<Arc<Container>>,
    /// Why the caller is not on the host (another pid or user namespace
    /// than the daemon's, or a container's cgroup); `None` on the host.
    pub confined: Option<String>,
}

/// What the container engine says of a caller's container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// The image reference it was made from (`registry/app:1.4`).
    pub image: String,
    /// The image's digest (`sha256:…`): the registry's manifest digest
    /// when the engine has one, otherwise the image id.
    pub image_digest: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The pod's service account, where it could be read (the kubelet's
    /// projected token of the pod).
    pub service_account: Option<String>,
}

impl Container {
    /// The Kubernetes namespace, from the CRI label the kubelet sets.
    pub fn k8s_namespace(&self) -> Option<&str> {
        self.label("io.kubernetes.pod.namespace")
    }
    pub fn k8s_pod(&self) -> Option<&str> {
        self.label("io.kubernetes.pod.name")
    }
    pub fn k8s_pod_uid(&self) -> Option<&str> {
        self.label("io.kubernetes.pod.uid")
    }
    pub fn k8s_container(&self) -> Option<&str> {
        self.label("io.kubernetes.container.name")
    }
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
    /// `namespace/pod` for logs, when it is a pod's.
    pub fn pod(&self) -> Option<String> {
        Some(format!("{}/{}", self.k8s_namespace()?, self.k8s_pod()?))
    }
}

impl Identity {
    /// On the host: in the daemon's pid and user namespaces and outside any
    /// container's cgroup.
    pub fn on_host(&self) -> bool {
        self.confined.is_none()
    }

    /// The identity of a peer with the kernel's credentials, whose
    /// connection was accepted at `accepted_s` seconds of `CLOCK_BOOTTIME`.
    pub fn read(uid: u32, gid: u32, pid: Option<i32>, accepted_s: f64) -> Self {
        Self::read_with(uid, gid, pid, accepted_s, namespaces_differ)
    }

    /// [`read`](Self::read), with where the process stands (see
    /// [`namespaces_differ`]) from `namespaces`: the accept loop has read
    /// it already, to count the connection.
    pub fn read_with(
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        accepted_s: f64,
        namespaces: impl FnOnce(i32) -> Option<String>,
    ) -> Self {
        // What holds whatever `/proc` says: the kernel's credentials and
        // the names the user database gives them. Where it stands cannot be
        // told, so it is not taken for the host.
        let kernel = Identity {
            uid,
            gid,
            pid,
            user: user_name(uid),
            group: group_name(gid),
            confined: Some("its process could not be read in /proc".into()),
            ..Identity::default()
        };
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
        let view = cgroup.as_deref().map(|path| CgroupView::read(path, &|dir| trusted_dir(dir)));
        let groups = status_groups(&status);
        let (exe, exe_deleted) = match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(path) => {
                let path = path.display().to_string();
                match path.strip_suffix(" (deleted)") {
                    Some(original) => (Some(original.to_string()), true),
                    None => (Some(path), false),
                }
            }
            Err(_) => (None, false),
        };
        // Any container id anywhere in the path keeps the caller off the
        // host; only one in the trusted part names its container.
        let confined = namespaces(pid).or_else(|| {
            let id = cgroup.as_deref().and_then(container_id)?;
            Some(format!("it runs in container {}'s cgroup", &id[..12]))
        });
        let container_id = view.as_ref().and_then(|v| container_id(&v.trusted));
        let identity = Identity {
            group_names: groups.iter().filter_map(|gid| group_name(*gid)).collect(),
            groups,
            exe,
            exe_deleted,
            systemd_unit: view.as_ref().and_then(|v| v.systemd_unit.clone()),
            user_unit: view.as_ref().and_then(|v| v.user_unit(uid)),
            cgroup: view.map(|v| v.trusted),
            container_id,
            confined,
            ..kernel.clone()
        };
        // Checked again: the pid may have changed hands while it was read.
        if proc("stat").as_deref().and_then(start_ticks) != started {
            return kernel;
        }
        identity
    }
}

/// Why process `pid` is not in the daemon's pid and user namespaces, or
/// `None` when it is. The namespace links need ptrace access; where they
/// cannot be read, `NSpid:` (one entry per pid namespace from the daemon's
/// down) and `uid_map` tell the same, and both are readable by anyone.
/// Cheap (a few `/proc` look-ups that never wait on the process), so the
/// accept loop may ask it.
pub fn namespaces_differ(pid: i32) -> Option<String> {
    let link = |who: &str, ns: &str| std::fs::read_link(format!("/proc/{who}/ns/{ns}")).ok();
    let pid_ns = match (link(&pid.to_string(), "pid"), link("self", "pid")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
            nspid.map(|l| l.split_whitespace().count()) == Some(1)
        }
    };
    if !pid_ns {
        return Some("it runs in another pid namespace than the daemon".into());
    }
    let user_ns = match (link(&pid.to_string(), "user"), link("self", "user")) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => {
            let map = |who: &str| std::fs::read_to_string(format!("/proc/{who}/uid_map")).ok();
            let squash = |m: &str| m.split_whitespace().collect::<Vec<_>>().join(" ");
            matches!((map(&pid.to_string()), map("self")), (Some(a), Some(b)) if squash(&a) == squash(&b))
        }
    };
    if !user_ns {
        return Some("it runs in another user namespace than the daemon".into());
    }
    None
}

/// A cgroup path split where the caller could have made the rest itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupView {
    /// The components whose parent directories are all root's and
    /// writable by nobody else: made by root (the system manager).
    pub trusted: String,
    /// The innermost unit of `trusted`.
    pub systemd_unit: Option<String>,
    /// The whole path, for `user_unit`.
    full: String,
}

impl CgroupView {
    /// Splits `path` (as in `/proc/<pid>/cgroup`), asking `trusted_dir`
    /// whether the cgroup directory at each prefix is root's alone.
    pub fn read(path: &str, trusted_dir: &dyn Fn(&str) -> bool) -> Self {
        let mut trusted = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            // Above the daemon's own cgroup namespace root (`..`): not a
            // path this view can check.
            if part == ".." {
                break;
            }
            // `part` is made inside the directory `trusted` names.
            if !trusted_dir(if trusted.is_empty() { "/" } else { &trusted }) {
                break;
            }
            trusted.push('/');
            trusted.push_str(part);
        }
        if trusted.is_empty() {
            trusted.push('/');
        }
        let systemd_unit = innermost_unit(&trusted);
        Self { trusted, systemd_unit, full: path.to_string() }
    }

    /// The innermost unit below `user@UID.service`, when `uid` is UID.
    fn user_unit(&self, uid: u32) -> Option<String> {
        let manager = format!("/user@{uid}.service/");
        let at = self.full.find(&manager)?;
        innermost_unit(&self.full[at + manager.len()..])
    }
}

fn innermost_unit(path: &str) -> Option<String> {
    path.rsplit('/').find(|part| part.ends_with(".service") || part.ends_with(".scope")).map(str::to_string)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host), from `/proc/self/mountinfo`.
pub fn cgroup_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            info.lines().find_map(|line| {
                // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE OPTS
                let (left, right) = line.split_once(" - ")?;
                let mut fields = left.split_whitespace().skip(3);
                let (root, point) = (fields.next()?, fields.next()?);
                (right.split_whitespace().next()? == "cgroup2" && root == "/").then(|| PathBuf::from(point))
            })
        })
        .as_deref()
}

/// Whether the cgroup directory `dir` (a path inside the hierarchy) is
/// root's and writable by nobody else, so nothing below it was made by a
/// user it was delegated to.
pub fn trusted_dir(dir: &str) -> bool {
    let Some(mount) = cgroup_mount() else { return false };
    match std::fs::symlink_metadata(mount.join(dir.trim_start_matches('/'))) {
        Ok(meta) => meta.is_dir() && meta.uid() == 0 && meta.mode() & 0o022 == 0,
        Err(_) => false,
    }
}

/// Whether the cgroup holds a process (`populated 1` in `cgroup.events`);
/// a cgroup that is gone holds none.
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

/// What must stay the same between the accept and each request of a
/// connection: the process (its start time) and the program it runs (the
/// executable's device and inode, which an `exec` of another binary
/// changes and a package upgrade replacing the file on disk does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub start_ticks: u64,
    pub exe: (u64, u64),
}

impl Stamp {
    /// Process `pid`'s stamp now, or `None` when it has exited (or cannot
    /// be read).
    pub fn read(pid: i32) -> Option<Self> {
        let start = |_: ()| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(start_ticks)
        };
        let start_ticks = start(())?;
        let exe = Self::exe_of(pid)?;
        // Read again: the pid must not have changed hands in between.
        (start(())? == start_ticks).then_some(Self { start_ticks, exe })
    }

    /// The device and inode of the program process `pid` runs: `stat`
    /// follows the link to the file, deleted or not.
    pub fn exe_of(pid: i32) -> Option<(u64, u64)> {
        let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        Some((meta.dev(), meta.ino()))
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

/// The outermost 64-hex-digit container id in a cgroup path
/// (`/system.slice/docker-ID.scope`, `/kubepods/…/cri-containerd-ID.scope`,
/// `/libpod_parent/libpod-ID`, `/docker/ID`).
fn container_id(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
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
            (&format!("0::/libpod_parent/libpod-{id}\n"), None, Some(id)),
            (
                &format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{id}.scope\n"),
                Some(&format!("crio-{id}.scope") as &str),
                Some(id),
            ),
            (&format!("0::/kubepods/besteffort/pod0b1c/{id}\n"), None, Some(id)),
            (&format!("0::/k8s.io/{id}\n"), None, Some(id)),
            ("0::/\n", None, None),
        ];
        for (cgroup, unit, container) in cases {
            let path = cgroup_v2_path(cgroup).unwrap();
            let view = CgroupView::read(&path, &|_| true);
            assert_eq!(view.systemd_unit.as_deref(), unit, "{cgroup}");
            assert_eq!(view.trusted, path, "every directory root's: all of it is trusted");
            assert_eq!(container_id(&path).as_deref(), container, "{cgroup}");
        }
        assert_eq!(cgroup_v2_path("12:cpu:/x\n"), None);
    }

    #[test]
    fn the_outermost_container_id_of_the_trusted_part_names_the_container() {
        let (outer, inner) = ("a".repeat(64), "b".repeat(64));
        // Root in container `outer` made a cgroup named after another one.
        let nested = format!("/libpod_parent/libpod-{outer}/docker-{inner}.scope");
        assert_eq!(container_id(&nested), Some(outer.clone()));
        // A user's delegated subtree names containers it is not in: the
        // trusted part ends above it.
        let path = format!("/user.slice/user-1000.slice/user@1000.service/docker-{inner}.scope");
        let view = CgroupView::read(&path, &|dir: &str| !dir.contains("user@1000"));
        assert_eq!(container_id(&view.trusted), None);
        assert_eq!(container_id(&path), Some(inner), "still not on the host");
    }

    #[test]
    fn a_unit_below_a_delegated_directory_is_the_users_not_the_systems() {
        // systemd hands `user@1000.service` to uid 1000: what is below it,
        // uid 1000 made, whatever it is called.
        let owned_by_root = |dir: &str| !dir.contains("user@1000.service");
        let path = "/user.slice/user-1000.slice/user@1000.service/app.slice/batch-x.service";
        let view = CgroupView::read(path, &owned_by_root);
        assert_eq!(view.trusted, "/user.slice/user-1000.slice/user@1000.service");
        assert_eq!(view.systemd_unit.as_deref(), Some("user@1000.service"));
        assert_eq!(view.user_unit(1000).as_deref(), Some("batch-x.service"));
        assert_eq!(view.user_unit(1001), None, "another user's manager names no unit of this caller's");
        // The same name under a root-owned slice is the system manager's.
        let system = CgroupView::read("/system.slice/batch-x.service", &owned_by_root);
        assert_eq!(system.systemd_unit.as_deref(), Some("batch-x.service"));
        assert_eq!(system.user_unit(1000), None);
        // A `Delegate=yes` service owns its own directory: its unit holds,
        // the sub-cgroups it made do not.
        let delegated = |dir: &str| !dir.starts_with("/system.slice/db.service");
        let view = CgroupView::read("/system.slice/db.service/payload/evil.service", &delegated);
        assert_eq!(view.trusted, "/system.slice/db.service");
        assert_eq!(view.systemd_unit.as_deref(), Some("db.service"));
        // Nothing trusted at all: the root alone.
        let view = CgroupView::read("/a.service", &|_| false);
        assert_eq!((view.trusted.as_str(), view.systemd_unit), ("/", None));
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
