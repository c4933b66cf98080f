//! lessor under systemd, without systemd as PID 1 here:
//!
//! - `LoadCredential=` through the credentials socket: a stand-in service
//!   manager (tests/fixtures/service_manager.py) runs as PID 1 of a pid
//!   namespace of its own with lessor as its child, binds the abstract
//!   address `\0<random>/unit/<unit>/<id>` exactly as systemd does, and
//!   puts a process in the unit's cgroup. The credential logs in; when the
//!   cgroup empties the role is gone; a unit the entry does not list, a
//!   unit no policy grants, a root process that is not PID 1, root on the
//!   host and another user are all refused and create nothing.
//! - Socket activation: `systemd-socket-activate` (Debian's systemd), and
//!   a socket held across a restart with requests queued in it while no
//!   daemon runs, each answered by the next one.
//! - `Type=notify`: `READY=1` only once start-up recovery is done,
//!   `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` at shutdown.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::trust::TestCgroup;

const MANAGER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/service_manager.py");

/// The stand-in service manager's control socket.
struct Manager {
    control: PathBuf,
}

impl Manager {
    /// One command, its one-line answer.
    async fn ask(&self, command: &str) -> String {
        let mut stream =
            wait_for("the service manager's control socket", Duration::from_secs(60), || async {
                tokio::net::UnixStream::connect(&self.control).await.ok()
            })
            .await;
        stream.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer.trim_end().to_string()
    }

    /// Loads credential `id` for `unit`: its text, or the error the
    /// manager saw.
    async fn load(&self, verb: &str, unit: &str, id: &str) -> Result<String, String> {
        let answer = self.ask(&format!("{verb} {unit} {id}")).await;
        match answer.strip_prefix("ok ") {
            Some(data) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).unwrap();
                Ok(String::from_utf8(bytes).unwrap())
            }
            None if answer == "ok" => Ok(String::new()),
            None => Err(answer),
        }
    }
}

/// `NAME='value'` lines as a shell reads them.
fn env_file(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .map(|line| {
            let (name, quoted) = line.split_once('=').unwrap();
            let value = quoted.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap().replace(r"'\''", "'");
            (name.to_string(), value)
        })
        .collect()
}

/// A daemon run by the stand-in manager, as PID 1 of its own pid
/// namespace, with `[server] credentials_socket` in its folder.
async fn managed_daemon(db: &TestDb, body: &str, cgroups: &TestCgroup) -> (Daemon, Manager) {
    // Root on the host is outside the manager's pid namespace, so no
    // default admin: named one for the test's own look at the leases.
    let body = format!(
        "credentials_socket = \"DAEMON_DIR/credentials.sock\"\nadmins = [{{ uid = 0, host = false }}]\n{body}"
    );
    let mut daemon = Daemon::prepare(db, &body);
    let control = daemon.dir.path().join("manager.sock");
    let credentials = daemon.dir.path().join("credentials.sock");
    daemon.wrapper = [
        "unshare",
        "--pid",
        "--fork",
        // unshare dies by the harness's SIGKILL; the manager then stops lessor.
        "--kill-child=SIGTERM",
        "--mount-proc",
        "python3",
        MANAGER,
        &path_str(&control),
        &path_str(&credentials),
        &path_str(&cgroups.0),
        "--",
    ]
    .map(String::from)
    .to_vec();
    daemon.spawn().await;
    (daemon, Manager { control })
}

fn lease_of<'a>(leases: &'a [Value], id: &str) -> &'a Value {
    leases.iter().find(|l| l["lease_id"] == id).unwrap_or_else(|| panic!("no lease {id} in {leases:?}"))
}

/// Connects to the credentials socket from `address` (abstract, as
/// systemd binds) as the test process or under `setpriv`; what it read or
/// the error.
fn connect_as(prefix: &[&str], socket: &Path, address: &str) -> String {
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(chr(0) + '{address}')\n\
         try:\n  s.connect({:?}); d=s.recv(4096); print('read', len(d))\n\
         except Exception as e:\n  print('err', type(e).__name__)\n",
        path_str(socket)
    );
    let mut command = Command::new(prefix.first().copied().unwrap_or("/usr/bin/python3"));
    command.args(prefix.iter().skip(1)).args(if prefix.is_empty() {
        vec![]
    } else {
        vec!["/usr/bin/python3"]
    });
    let out = command.arg("-c").arg(script).stderr(Stdio::inherit()).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_credential_gives_a_unit_a_login_for_exactly_its_life_and_nobody_else_anything() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("unit");
    db.track_prefix(&prefix);
    let (ungranted, ungranted_prefix) = unique_role("nogrant");
    db.track_prefix(&ungranted_prefix);
    let cgroups = TestCgroup::new(&format!("lessor-sd-{}", rand_suffix(8)));
    let suffix = rand_suffix(6);
    let unit = format!("billing-{suffix}.service");
    let body = format!(
        "{}\n{}\n{}\n[credentials.\"db.env\"]\nrole = {role:?}\nunits = [\"billing-{suffix}.service\", \"web-{suffix}.service\"]\n\n\
         [credentials.\"other.env\"]\nrole = {ungranted:?}\nunits = [\"billing-*.service\"]\n\n\
         [credentials.\"web.env\"]\nrole = {role:?}\nunits = [\"web-*.service\"]\n{}",
        pg_connection(&db, None),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE]),
        pg_role(&ungranted, "10m", "1h", &[CREATE_ROLE]),
        policy("billing", &format!("systemd_unit = \"billing-{suffix}.service\""), &[&format!("creds:{role}")], ""),
    );
    let (daemon, manager) = managed_daemon(&db, &body, &cgroups).await;

    assert!(manager.ask(&format!("start {unit}")).await.starts_with("ok "));
    let text = manager.load("load", &unit, "db.env").await.expect("the unit's credential");
    let vars = env_file(&text);
    let (user, password) = (&vars["PGUSER"], &vars["PGPASSWORD"]);
    assert!(user.starts_with(&prefix), "{user}");
    let login = db.login(user, password).await.expect("the delivered credential logs in");
    drop(login);
    let leases = daemon.leases().await;
    let lease = lease_of(&leases, &vars["LESSOR_LEASE_ID"]);
    assert_eq!(lease["owner"]["unit"], unit.as_str());
    assert_eq!(lease["state"], "active");

    // Refused, each creating nothing: a unit `units` does not list; a unit
    // listed that no policy grants the role; a role no policy grants; a
    // root process in the manager's namespace that is not PID 1; root on
    // the host; another user.
    let web = format!("web-{suffix}.service");
    assert!(manager.ask(&format!("start {web}")).await.starts_with("ok "));
    let refused = [
        manager.load("load", &format!("payroll-{suffix}.service"), "db.env").await,
        manager.load("load", &web, "db.env").await,
        manager.load("load", &web, "web.env").await,
        manager.load("load", &unit, "other.env").await,
        manager.load("load", &unit, "unknown.env").await,
        manager.load("load-not-pid1", &unit, "db.env").await,
    ];
    // The protocol has no refusal: the manager reads an empty stream.
    for (i, answer) in refused.iter().enumerate() {
        assert!(matches!(answer.as_deref(), Ok("") | Err(_)), "request {i} was answered: {answer:?}");
    }
    let credentials = daemon.dir.path().join("credentials.sock");
    let address = format!("0123456789abcdef/unit/{unit}/db.env");
    let host_root = connect_as(&[], &credentials, &address);
    assert!(host_root.starts_with("err") || host_root == "read 0", "root on the host: {host_root}");
    std::fs::set_permissions(daemon.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let nobody =
        connect_as(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], &credentials, &address);
    assert!(nobody.starts_with("err"), "another user: {nobody}");
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "only the unit's own credential was made");
    assert!(db.roles_with_prefix(&ungranted_prefix).await.is_empty());
    let log = daemon.log();
    assert!(log.contains("not the service manager"), "{log}");
    assert!(!log.contains(password.as_str()), "the password is in the log");

    // The unit stops: its cgroup empties, and the credential goes.
    let stopped = Instant::now();
    assert_eq!(manager.ask(&format!("stop {unit}")).await, "ok");
    wait_for("the unit's role to be dropped", Duration::from_secs(30), || async {
        (!db.role_exists(user).await).then_some(())
    })
    .await;
    eprintln!("role dropped {:?} after the unit's cgroup emptied", stopped.elapsed());
    // The store records the revocation just after the backend's drop.
    wait_for("the unit's lease to be recorded revoked", Duration::from_secs(20), || async {
        let lease = daemon.client().lease_get(&vars["LESSOR_LEASE_ID"]).await.unwrap();
        (lease.body["state"] == "revoked").then_some(())
    })
    .await;
    assert!(db.login(user, password).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_units_lease_is_renewed_while_it_runs_and_watched_again_after_a_restart() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("unitre");
    db.track_prefix(&prefix);
    let cgroups = TestCgroup::new(&format!("lessor-sd-{}", rand_suffix(8)));
    let suffix = rand_suffix(6);
    let (kept, ended) = (format!("kept-{suffix}.service"), format!("ended-{suffix}.service"));
    let body = format!(
        "{}\n{}\n[credentials.pg]\nrole = {role:?}\nformat = \"json\"\nttl = \"20s\"\nunits = [\"*-{suffix}.service\"]\n{}",
        pg_connection(&db, None),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE]),
        policy("units", &format!("systemd_unit = \"*-{suffix}.service\""), &[&format!("creds:{role}")], ""),
    );
    let (mut daemon, manager) = managed_daemon(&db, &body, &cgroups).await;
    let mut delivered = Vec::new();
    for unit in [&kept, &ended] {
        assert!(manager.ask(&format!("start {unit}")).await.starts_with("ok "));
        let json: Value = serde_json::from_str(&manager.load("load", unit, "pg").await.unwrap()).unwrap();
        assert_eq!(json["ttl_seconds"], 20, "the entry's ttl: {json}");
        delivered.push(json);
    }
    let username = |i: usize| delivered[i]["credential"]["username"].as_str().unwrap().to_string();
    let lease_id = |i: usize| delivered[i]["lease_id"].as_str().unwrap().to_string();
    let first_expiry = delivered[0]["expires_at"].as_str().unwrap().to_string();

    // lessor stops; one unit stops while it is down; lessor starts again.
    assert!(manager.ask("lessor-stop").await.starts_with("ok"));
    assert_eq!(manager.ask(&format!("stop {ended}")).await, "ok");
    assert_eq!(manager.ask("lessor-start").await, "ok");
    let client = daemon.client();
    wait_for("the restarted daemon", Duration::from_secs(60), || async {
        matches!(client.health().await, Ok(r) if r.status == 200).then_some(())
    })
    .await;
    wait_for("the stopped unit's role to be dropped", Duration::from_secs(30), || async {
        (!db.role_exists(&username(1)).await).then_some(())
    })
    .await;

    // The running unit's lease outlives its 20 s TTL: it is renewed.
    wait_for("the running unit's lease to be renewed", Duration::from_secs(90), || async {
        let leases = daemon.leases().await;
        let lease = lease_of(&leases, &lease_id(0));
        (lease["state"] == "active" && lease["expires_at"].as_str().unwrap() > first_expiry.as_str())
            .then_some(())
    })
    .await;
    assert!(db.role_exists(&username(0)).await, "the running unit keeps its login");

    assert_eq!(manager.ask(&format!("stop {kept}")).await, "ok");
    wait_for("the second unit's role to be dropped", Duration::from_secs(30), || async {
        (!db.role_exists(&username(0)).await).then_some(())
    })
    .await;
    daemon.stop();
}

/// A raw HTTP request on a socket already connected: nothing of it needs
/// a daemon until it is read.
fn send_issue(socket: &Path, role: &str) -> StdUnixStream {
    let mut stream =
        StdUnixStream::connect(socket).expect("the socket queues connections while no daemon runs");
    let request = format!(
        "POST /v1/creds/{role} HTTP/1.1\r\nhost: lessor\r\ncontent-type: application/json\r\n\
         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// Starts `lessor serve` with `listener` as its socket-activated fd 3.
fn activated(listener: &UnixListener, config: &Path, log: &Path) -> std::process::Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=api exec "$0" serve --config "$1""#)
        .arg(env!("CARGO_BIN_EXE_lessor"))
        .arg(config)
        .env_remove("LESSOR_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: dup2 is async-signal-safe; fd 3 is the listener's copy,
    // without close-on-exec, as the service manager passes it.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_socket_keeps_requests_queued_while_the_daemon_restarts() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("act");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "10m", "1h", &[CREATE_ROLE]));
    let daemon = Daemon::prepare(&db, &body);
    // The manager's socket: bound and listening before any daemon runs.
    let listener = UnixListener::bind(&daemon.socket).unwrap();
    let mut child = activated(&listener, &daemon.config_path, &daemon.log_path);
    let client = daemon.client();
    wait_for("the activated daemon", Duration::from_secs(60), || async {
        matches!(client.health().await, Ok(r) if r.status == 200).then_some(())
    })
    .await;
    assert!(
        daemon.log().contains("serving the API socket the service manager passed in"),
        "{}",
        daemon.log()
    );
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);

    // Stopped: the socket file is the manager's and stays.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", daemon.log());
    assert!(daemon.socket.exists(), "the daemon removed the manager's socket file");

    // Requests made while no daemon runs wait in the socket's queue...
    let queued: Vec<StdUnixStream> = (0..8).map(|_| send_issue(&daemon.socket, &role)).collect();
    // ...and the next daemon answers every one.
    let mut child = activated(&listener, &daemon.config_path, &daemon.log_path);
    let answers = tokio::task::spawn_blocking(move || {
        queued
            .into_iter()
            .map(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                answer
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in &answers {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let user = body["credential"]["username"].as_str().unwrap();
        assert!(db.role_exists(user).await, "{user}");
    }
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 9);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activate_starts_the_daemon_on_its_socket() {
    let db = TestDb::create().await;
    let mut daemon = Daemon::prepare(&db, "");
    daemon.wrapper =
        ["systemd-socket-activate", "-l", &path_str(&daemon.socket), "--fdname=api", "-E", "LESSOR_LOG"]
            .map(String::from)
            .to_vec();
    // The first connection (the harness's health check) starts it.
    daemon.spawn().await;
    assert!(
        daemon.log().contains("serving the API socket the service manager passed in"),
        "{}",
        daemon.log()
    );
    daemon.stop();
}

/// Reads notification datagrams until one holds `wanted` (or panics at
/// the deadline); returns every message read, in order.
fn read_until(socket: &UnixDatagram, wanted: &str, deadline: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut seen = Vec::new();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let done = message.lines().any(|l| l == wanted);
            seen.push(message);
            if done {
                return seen;
            }
        }
        assert!(start.elapsed() < deadline, "no {wanted} within {deadline:?}; read {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_manager_hears_ready_after_recovery_then_the_watchdog_then_stopping() {
    let db = TestDb::create().await;
    let mut daemon = Daemon::prepare(&db, "");
    let notify = daemon.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    daemon.set_env(&[("NOTIFY_SOCKET", &path_str(&notify)), ("WATCHDOG_USEC", "400000")]);
    // The watchdog is the daemon's only when WATCHDOG_PID names it, as
    // systemd sets it: the shell's pid is the daemon's after the exec.
    daemon.wrapper = ["sh", "-c", r#"WATCHDOG_PID=$$ exec "$0" "$@""#].map(String::from).to_vec();
    daemon.spawn().await;
    let seen = read_until(&socket, "READY=1", Duration::from_secs(60));
    assert!(seen[0].contains("STATUS=recovering leases"), "{seen:?}");
    // READY=1 follows the recovery's own log line, never precedes it.
    let log_at_ready = daemon.log();
    assert!(log_at_ready.contains("start-up recovery done"), "{log_at_ready}");
    let seen = read_until(&socket, "WATCHDOG=1", Duration::from_secs(30));
    assert!(!seen.is_empty());
    read_until(&socket, "WATCHDOG=1", Duration::from_secs(30));
    daemon.signal(libc::SIGTERM);
    read_until(&socket, "STOPPING=1", Duration::from_secs(30));
    daemon.stop();
}
