//! A caller's identity cannot be borrowed or chosen, and no local user can
//! stall the daemon, tried the way an attacker would: root in a container's
//! cgroup and its own pid namespace, a unit name made in a delegated cgroup,
//! a process that execs (or forks and execs) after connecting, and tens of
//! thousands of half-sent requests from another uid.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The cgroup v2 hierarchy's mount point, mounted for the test when the
/// machine has none.
pub(crate) fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mounts.lines() {
        let (left, right) = line.split_once(" - ").unwrap();
        if right.starts_with("cgroup2 ") {
            return left.split(' ').nth(4).unwrap().into();
        }
    }
    let dir = PathBuf::from("/var/tmp/lessor-test-cgroup2");
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("mount").args(["-t", "cgroup2", "none"]).arg(&dir).status().unwrap();
    assert!(status.success(), "cannot mount a cgroup2 hierarchy for the test");
    dir
}

/// A cgroup tree made for the test (its top directory), removed with every
/// directory below it when dropped.
pub(crate) struct TestCgroup(pub PathBuf);

impl TestCgroup {
    /// `/<top>` under the cgroup2 root, for the test's own tree.
    pub fn new(top: &str) -> Self {
        let dir = cgroup2_root().join(top);
        std::fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    /// Makes `rel` (and its parents) below the top; returns its path.
    pub fn make(&self, rel: &str) -> PathBuf {
        let dir = self.0.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A shell line that moves the shell into `dir` before it runs the rest.
    pub fn enter(dir: &Path) -> String {
        format!("echo $$ > {} && ", dir.join("cgroup.procs").display())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Deepest first; a cgroup with processes left cannot go, and stays.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `sh -c "<line>"` with the daemon's socket in LESSOR_SOCKET.
fn sh(daemon: &Daemon, line: &str) -> Output {
    Command::new("sh").arg("-c").arg(line).env("LESSOR_SOCKET", &daemon.socket).output().unwrap()
}

fn hex64() -> String {
    (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_in_a_container_is_no_admin_but_keeps_what_its_cgroup_is_granted() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("ctr");
    db.track_prefix(&prefix);
    let tree = TestCgroup::new(&format!("lessor-t-{}", rand_suffix(8)));
    let scope = tree.make(&format!("system.slice/docker-{}.scope", hex64()));
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("containers", "systemd_unit = \"docker-*.scope\"", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    // Host root's lease, which the container must not be able to touch.
    let host_lease = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(host_lease.status, 200, "{:?}", host_lease.body);
    let host_user = host_lease.body["credential"]["username"].as_str().unwrap().to_string();

    // Root (uid 0 to the kernel) in the container's cgroup and in pid and
    // mount namespaces of its own, as `docker run` puts it.
    let in_container = |args: &str| {
        sh(
            &daemon,
            &format!("{}exec unshare --pid --mount --fork {LESSOR} {args}", TestCgroup::enter(&scope)),
        )
    };
    for (args, action) in [
        (format!("lease revoke --prefix {role}/ --force"), "revoke"),
        ("tidy".to_string(), "tidy"),
        (format!("lease revoke {}", host_lease.body["lease_id"].as_str().unwrap()), "revoke"),
    ] {
        let out = in_container(&args);
        assert!(!out.status.success(), "root in a container could `{args}`");
        let message = stderr(&out);
        assert!(message.contains("HTTP 403") || message.contains("HTTP 404"), "{args}: {message}");
        if args.contains("--prefix") || args == "tidy" {
            assert!(message.contains("only on the host"), "{action}: the refusal says why: {message}");
            assert!(message.contains("another pid namespace"), "{message}");
        }
    }
    assert!(db.role_exists(&host_user).await, "the host's lease survived the container's tries");

    // Its cgroup policy still grants it the role.
    let out = in_container(&format!("creds {role} --format json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(db.role_exists(issued["credential"]["username"].as_str().unwrap()).await);
    let lease = daemon.client().lease_get(issued["lease_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(lease.body["owner"]["policy"], "containers", "{:?}", lease.body);

    // In the container's cgroup but the host's namespaces: still not the host.
    let out = sh(&daemon, &format!("{}exec {LESSOR} tidy", TestCgroup::enter(&scope)));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("container"), "{}", stderr(&out));

    // The host's root is still an admin.
    let revoked = daemon.client().revoke_prefix(&format!("{role}/"), true).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    wait_for("the host's revoke-prefix to drop the roles", Duration::from_secs(30), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
    let log = daemon.log();
    assert!(log.contains("not_admin=") && log.contains("another pid namespace"), "the log says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_a_user_made_in_its_delegated_cgroup_is_not_a_systemd_unit() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("unit");
    let (mine, mine_prefix) = unique_role("uunit");
    db.track_prefix(&prefix);
    db.track_prefix(&mine_prefix);
    let tree = TestCgroup::new(&format!("lessor-t-{}", rand_suffix(8)));
    // What systemd makes for a user's manager: user@65534.service and all
    // below it belong to uid 65534, who may make any "unit" there.
    tree.make("user.slice/user-65534.slice");
    let manager = tree.make("user.slice/user-65534.slice/user@65534.service");
    let delegated = tree.make("user.slice/user-65534.slice/user@65534.service/app.slice/batch-x.service");
    let status = Command::new("chown").arg("-R").arg("65534:65534").arg(&manager).status().unwrap();
    assert!(status.success());
    // The same name where only root can make it.
    let system = tree.make("system.slice/batch-x.service");
    let body = format!(
        "{}\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&mine, "1h", "2h", &[CREATE_ROLE]),
        policy("batch", "systemd_unit = \"batch-*.service\"", &[&format!("creds:{role}")], ""),
        policy("own_units", "user_unit = \"batch-*.service\", uid = 65534", &[&format!("creds:{mine}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let as_nobody_in = |dir: &Path, role: &str| {
        sh(
            &daemon,
            &format!(
                "{}exec setpriv --reuid=65534 --regid=65534 --clear-groups {LESSOR} creds {role} --format json",
                TestCgroup::enter(dir)
            ),
        )
    };

    let out = as_nobody_in(&delegated, &role);
    assert!(!out.status.success(), "a unit name made in a delegated cgroup matched systemd_unit");
    assert!(stderr(&out).contains("HTTP 403"), "{}", stderr(&out));
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    // There it is the user's own unit.
    let out = as_nobody_in(&delegated, &mine);
    assert!(out.status.success(), "user_unit: {}", stderr(&out));
    // Where root made it, the name is the system manager's.
    let out = as_nobody_in(&system, &role);
    assert!(out.status.success(), "{}", stderr(&out));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(db.role_exists(issued["credential"]["username"].as_str().unwrap()).await);
    let out = as_nobody_in(&system, &mine);
    assert!(!out.status.success(), "a system unit is no user_unit");
}

/// Runs `program` (a Python interpreter) on a script that connects, asks
/// `GET /v1/health` (so the daemon has accepted the connection and read
/// who connected), then sends `POST /v1/creds/ROLE` in one of three ways:
/// - `send`: itself;
/// - `fork-exec`: it forks, and the child execs `allowed` and sends the
///   request on the inherited connection while the parent waits;
/// - `exec`: it execs `allowed`, which sends the request.
///
/// Returns the answer's status code and body.
fn borrow(program: &str, mode: &str, socket: &Path, allowed: &str, role: &str) -> (u16, String) {
    let script = r#"
import os, socket, sys
mode, path, allowed, role = sys.argv[1:5]
def ask(s, request):
    s.sendall(request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(65536)
        if not chunk:
            return answer.decode(errors="replace")
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
    while len(body) < length:
        body += s.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")
def creds(s):
    sys.stdout.write(ask(s, "POST /v1/creds/%s HTTP/1.1\r\nHost: lessor\r\nContent-Length: 0\r\n\r\n" % role))
if mode == "child":
    creds(socket.socket(fileno=int(path)))
    sys.exit(0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
assert " 200 " in ask(s, "GET /v1/health HTTP/1.1\r\nHost: lessor\r\n\r\n")
if mode == "send":
    creds(s)
elif mode == "exec":
    os.set_inheritable(s.fileno(), True)
    os.execv(allowed, [allowed, "-c", SCRIPT, "child", str(s.fileno()), allowed, role])
elif mode == "fork-exec":
    os.set_inheritable(s.fileno(), True)
    pid = os.fork()
    if pid == 0:
        os.execv(allowed, [allowed, "-c", SCRIPT, "child", str(s.fileno()), allowed, role])
    s.close()
    # The parent stays alive (the process the kernel names) while the child asks.
    os.waitpid(pid, 0)
"#;
    let script = format!("SCRIPT = {script:?}\n{script}");
    let out = Command::new(program)
        .args(["-c", &script, mode, &socket.display().to_string(), allowed, role])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        panic!("{mode}: no HTTP answer: {text:?}; stderr: {}", stderr(&out));
    });
    (status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// An answer for a failure message: an error as it is, an issued
/// credential without its password.
fn shown(answer: &str) -> String {
    match serde_json::from_str::<Value>(answer) {
        Ok(v) if v.get("error").is_some() => answer.to_string(),
        Ok(v) => format!("an issued credential, lease {}", v["lease_id"]),
        Err(_) => "(not JSON)".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_execs_after_connecting_cannot_borrow_an_allowed_programs_identity() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("exe");
    db.track_prefix(&prefix);
    // The allowed program: a copy of the Python interpreter at a path of its own.
    let bin = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").expect("python3 is installed");
    let allowed = bin.path().join("allowed-python");
    std::fs::copy(&python, &allowed).unwrap();
    let allowed = allowed.display().to_string();
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("by_exe", &format!("exe = {allowed:?}"), &[&format!("creds:{role}")], ""),
    );
    // No admin by uid: root here is a caller like any other.
    let daemon = Daemon::start(&db, &format!("{body}\n")).await;
    let daemon = restart_with_admins(daemon, "admins = []").await;
    let python = python.display().to_string();

    // The allowed program itself: granted.
    let (status, answer) = borrow(&allowed, "send", &daemon.socket, &allowed, &role);
    assert_eq!(status, 200, "{}", shown(&answer));
    // Another program connects; its child execs the allowed one and asks.
    let (status, answer) = borrow(&python, "fork-exec", &daemon.socket, &allowed, &role);
    assert_eq!(status, 403, "fork + exec after connect borrowed the identity: {}", shown(&answer));
    // Another program connects, then execs the allowed one itself.
    let (status, answer) = borrow(&python, "exec", &daemon.socket, &allowed, &role);
    assert_eq!(status, 403, "exec after connect borrowed the identity: {}", shown(&answer));
    assert!(
        answer.contains("identity_changed") && answer.contains("exec after connect"),
        "{}",
        shown(&answer)
    );
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "only the allowed program's role was made");
}

/// The same daemon with `line` added to its `[server]` section.
async fn restart_with_admins(mut daemon: Daemon, line: &str) -> Daemon {
    daemon.stop();
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(&daemon.config_path, config.replacen("[server]\n", &format!("[server]\n{line}\n"), 1))
        .unwrap();
    daemon.spawn().await;
    daemon
}

/// Run as another uid for `seconds` (and at least `attempts` connection
/// attempts, within a minute): keeps up to `hold` connections open, each
/// with half a request sent, and opens a new one whenever the daemon closes
/// one; then waits up to `wait` seconds for the daemon to close the rest.
/// Prints JSON: attempts, connections the kernel refused (backlog full),
/// answered 429 at once, closed by the daemon later, left open, and the
/// longest any stayed open.
const FLOOD: &str = r#"
import json, resource, selectors, socket, sys, time
path, hold, seconds, attempts_min, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, hold + 64), hard))
sel = selectors.DefaultSelector()
attempts = errors = refused = closed = 0
longest = 0.0
def reap(timeout):
    global refused, closed, longest
    for key, _ in sel.select(timeout=timeout):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 429"):
            refused += 1
        else:
            closed += 1
        longest = max(longest, time.monotonic() - key.data)
        sel.unregister(s)
        s.close()
start = time.monotonic()
while time.monotonic() - start < 60 and (time.monotonic() - start < seconds or attempts < attempts_min):
    while len(sel.get_map()) < hold:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        attempts += 1
        try:
            s.connect(path)
            s.send(b"POST /v1/creds/x HTTP/1.1\r\nHost: lessor\r\n")
        except OSError:
            errors += 1
            s.close()
            break
        sel.register(s, selectors.EVENT_READ, time.monotonic())
        if attempts % 100 == 0:
            break
    reap(0.01)
deadline = time.monotonic() + wait
while sel.get_map() and time.monotonic() < deadline:
    reap(0.5)
print(json.dumps({"attempts": attempts, "connect_errors": errors, "refused": refused, "closed": closed,
                  "left_open": len(sel.get_map()), "longest_open_s": longest}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_half_sent_requests_from_one_uid_stall_nobody_else() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("flood");
    let (short, short_prefix) = unique_role("flood_s");
    db.track_prefix(&prefix);
    db.track_prefix(&short_prefix);
    let body = format!(
        "{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&short, "4s", "4s", &[CREATE_ROLE]),
        policy("others", "uid = 65533", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    let daemon = restart_with_admins(daemon, "header_timeout = \"2s\"").await;
    daemon.open_to_all_users();
    // A lease that falls due while the attack runs.
    let due = daemon.client().creds(&short, None).await.unwrap();
    assert_eq!(due.status, 200, "{:?}", due.body);
    let due_user = due.body["credential"]["username"].as_str().unwrap().to_string();
    let due_at = Instant::now() + Duration::from_secs(4);

    // uid 65534, four processes, each at least 5 200 half-sent requests
    // over 30 s, holding as many open as the daemon lets it.
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap().display().to_string();
    let mut attackers: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", &python, "-c", FLOOD])
                .arg(&daemon.socket)
                .args(["5200", "30", "5200", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for("the flood to be refused", Duration::from_secs(60), || async {
        (daemon.metric("lessor_connections_refused_total").await >= 1000.0).then_some(())
    })
    .await;
    let open = daemon.metric("lessor_connections_open").await;
    assert!(open <= 256.0 + 16.0, "uid 65534 holds at most its 256 (and the test a few): {open} open");

    // Root and another uid are answered while it lasts.
    let started = Instant::now();
    let root = tokio::time::timeout(Duration::from_secs(20), daemon.client().creds(&role, None))
        .await
        .expect("root's issuance was answered")
        .unwrap();
    let root_took = started.elapsed();
    assert_eq!(root.status, 200, "{:?}", root.body);
    let started = Instant::now();
    let other =
        daemon.as_user(65533, 65533, LESSOR).args(["creds", &role, "--format", "json"]).output().unwrap();
    let other_took = started.elapsed();
    assert!(other.status.success(), "uid 65533: {}", stderr(&other));
    eprintln!(
        "during the flood: root's issuance took {root_took:?}, uid 65533's `lessor creds` {other_took:?}"
    );

    // The lease that fell due is revoked on time, the attack still on.
    wait_for("the due lease's role to be dropped", Duration::from_secs(60), || async {
        (!db.role_exists(&due_user).await).then_some(())
    })
    .await;
    let late = Instant::now().saturating_duration_since(due_at);
    eprintln!("the due lease's role was gone {late:?} after its expiry");
    assert!(
        attackers.iter_mut().all(|a| a.try_wait().unwrap().is_none()),
        "the attack was over before the lease was revoked: the test proves nothing"
    );

    // Every attacking connection was closed by the daemon: at once past
    // the per-uid cap, after the header timeout below it.
    let mut attempts = 0;
    for attacker in attackers {
        let out = attacker.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let done: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|_| panic!("attacker said: {text}; {}", stderr(&out)));
        eprintln!("attacker: {done}");
        assert_eq!(done["left_open"], 0, "connections the daemon never closed: {done}");
        assert!(done["closed"].as_u64().unwrap() > 0, "{done}");
        // Closed by the header timeout (2 s), with room for a loaded machine.
        assert!(done["longest_open_s"].as_f64().unwrap() < 30.0, "{done}");
        attempts += done["attempts"].as_u64().unwrap();
    }
    assert!(attempts >= 4 * 5200, "{attempts} attempts");
    wait_for("the attack's connections to be gone", Duration::from_secs(30), || async {
        (daemon.metric("lessor_connections_open").await <= 2.0).then_some(())
    })
    .await;
}

/// Run as another uid: `GET path` on the socket; prints the status code, a
/// space and the body.
const GET: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(("GET %s HTTP/1.1\r\nHost: lessor\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
answer = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
head, _, body = answer.partition(b"\r\n\r\n")
print(head.split()[1].decode(), body.decode(errors="replace"))
"#;

/// Run as another uid: opens `n` watch streams one after the other and
/// prints each one's status; then closes the first and opens one more.
const WATCHES: &str = r#"
import socket, sys
def watch():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: lessor\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        head += s.recv(1)
    return s, head.split()[1].decode()
held = [watch() for _ in range(int(sys.argv[2]))]
print(" ".join(code for _, code in held))
held[0][0].close()
import time
for _ in range(200):
    s, code = watch()
    if code == "200":
        break
    s.close()
    time.sleep(0.05)
print(code)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_details_and_watch_streams_are_bounded_for_other_users() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("bound");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("apps", "uid = 65534", &[&format!("creds:{role}")], ""),
        policy("monitoring", "uid = 65533", &["metrics"], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    let daemon = restart_with_admins(daemon, "max_watches_per_uid = 2").await;
    daemon.open_to_all_users();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap().display().to_string();
    let run = |uid: u32, script: &str, args: &[&str]| {
        let out = daemon
            .as_user(uid, uid, &python)
            .arg("-c")
            .arg(script)
            .arg(&daemon.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    let metrics = run(65534, GET, &["/v1/metrics"]);
    assert!(metrics.starts_with("403 ") && metrics.contains("needs permission"), "{metrics}");
    let metrics = run(65533, GET, &["/v1/metrics"]);
    assert!(metrics.starts_with("200 ") && metrics.contains("lessor_requests_total"), "{metrics}");
    let health = run(65534, GET, &["/v1/health"]);
    assert_eq!(health, "200 {\"status\":\"ready\"}", "no details for a caller without metrics");
    let health = run(65533, GET, &["/v1/health"]);
    assert!(health.contains("scheduled_leases"), "{health}");

    let watches = run(65534, WATCHES, &["3"]);
    assert_eq!(watches, "200 200 429\n200", "two streams per uid, a third once one closed");
}

/// Opens two connections: one that sends nothing, one that sends a whole
/// request (keep-alive) and reads the answer. Prints, for each, the seconds
/// until the daemon closed it (or -1 if it did not within 60 s).
const IDLE: &str = r#"
import socket, sys, time
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    return s
silent, idle = conn(), conn()
idle.sendall(b"GET /v1/health HTTP/1.1\r\nHost: lessor\r\n\r\n")
answer = b""
while b"\r\n\r\n" not in answer:
    answer += idle.recv(4096)
start = time.monotonic()
out = []
for s in (silent, idle):
    s.settimeout(60 - (time.monotonic() - start))
    try:
        while s.recv(4096):
            pass
        out.append("%.2f" % (time.monotonic() - start))
    except (socket.timeout, OSError):
        out.append("-1")
print(answer.split(b"\r\n")[0].decode(), *out)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let db = TestDb::create().await;
    let daemon = Daemon::start(&db, &pg_connection(&db, None)).await;
    let daemon = restart_with_admins(daemon, "header_timeout = \"2s\"").await;
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let out = Command::new(python).arg("-c").arg(IDLE).arg(&daemon.socket).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields.get(..3), Some(&["HTTP/1.1", "200", "OK"][..]), "{text} {}", stderr(&out));
    for (what, seconds) in [("silent", fields[3]), ("idle keep-alive", fields[4])] {
        let seconds: f64 = seconds.parse().unwrap();
        assert!(seconds >= 0.0, "the {what} connection was never closed: {text}");
        // The header timeout, not at once: a kept-alive connection is served again meanwhile.
        assert!(seconds >= 1.0, "the {what} connection was closed too soon: {text}");
    }
}
