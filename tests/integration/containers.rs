//! Who a containerised caller is, from the container engine itself: real
//! podman containers (rootful, runc, the test image `scripts/test`
//! imports from busybox-static) whose processes call the daemon through
//! its socket, bind-mounted in, and a `podman system service` of the
//! test's own answering the Docker Engine API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::trust::TestCgroup;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn image() -> String {
    std::env::var("LESSOR_TEST_PODMAN_IMAGE")
        .expect("LESSOR_TEST_PODMAN_IMAGE is not set: run the tests through scripts/test")
}

fn podman(args: &[&str]) -> Output {
    let out = Command::new("podman").args(args).stdin(Stdio::null()).output().expect("podman runs");
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `podman system service` on a socket of the test's own.
struct Engine {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Engine {
    async fn start() -> Self {
        let mut engine = Self { dir: tempfile::tempdir().unwrap(), child: None };
        engine.restart().await;
        engine
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("engine.sock")
    }

    async fn restart(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("podman")
            .args(["system", "service", "--time", "0"])
            .arg(format!("unix://{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman system service starts");
        self.child = Some(child);
        let socket = self.socket();
        wait_for("the engine to answer /_ping", Duration::from_secs(60), || {
            let socket = socket.clone();
            async move { ping(&socket).then_some(()) }
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(!ping(&self.socket()), "the engine still answers");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ping(socket: &Path) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}

/// A running container of the test image with the daemon's socket and the
/// lessor binary bind-mounted in (and `/usr`, for the binary's
/// libraries); removed when dropped.
struct Ctr {
    name: String,
}

impl Ctr {
    fn run(name: &str, labels: &[&str], daemon: &Daemon) -> Self {
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        for label in labels {
            args.extend(["--label".into(), label.to_string()]);
        }
        args.extend([
            "-v".into(),
            format!("{}:/run/lessor/lessor.sock", daemon.socket.display()),
            "-v".into(),
            "/usr:/usr:ro".into(),
            "-v".into(),
            format!("{LESSOR}:/lessor:ro"),
            "-e".into(),
            "LESSOR_SOCKET=/run/lessor/lessor.sock".into(),
            image(),
            "sleep".into(),
            "3600".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = podman(&args);
        assert!(out.status.success(), "podman run {name}: {}", text(&out));
        Self { name: name.to_string() }
    }

    /// `lessor ARGS` inside the container.
    fn lessor(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name, "/lessor"];
        all.extend_from_slice(args);
        podman(&all)
    }

    fn id(&self) -> String {
        let out = podman(&["inspect", "--format", "{{.Id}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn remove(&self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        self.remove();
    }
}

fn issued(out: &Output) -> Value {
    assert!(out.status.success(), "refused: {}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn refused(out: &Output, why: &str) {
    assert!(!out.status.success(), "granted although {why}: {}", text(out));
    assert!(text(out).contains("HTTP 403"), "{why}: {}", text(out));
}

fn containers_section(engine: &Engine) -> String {
    format!("[containers]\nengine = \"docker\"\nsocket = {:?}\ncache_ttl = \"1s\"\n", engine.socket())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_image_and_name_from_the_engine_decide_what_a_container_gets() {
    let db = TestDb::create().await;
    let engine = Engine::start().await;
    let (role, prefix) = unique_role("ctr");
    let (named, named_prefix) = unique_role("ctrn");
    db.track_prefix(&prefix);
    db.track_prefix(&named_prefix);
    let run = rand_suffix(6);
    let audit = tempfile::tempdir().unwrap();
    let audit_log = audit.path().join("audit.jsonl");
    let body = format!(
        "audit_log = {audit_log:?}\n\n{}\n{}\nusername_template = \"v_{role}_{{container}}_{{random}}\"\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&named, "1h", "2h", &[CREATE_ROLE]),
        containers_section(&engine),
        policy("billing", "label.app = \"billing\"", &[&format!("creds:{role}")], ""),
        policy(
            "by_image",
            &format!("image = \"localhost/lessor-busybox:*\", container_name = \"named-{run}-*\""),
            &[&format!("creds:{named}")],
            ""
        ),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();

    let billing = Ctr::run(&format!("billing-{run}"), &["app=billing", "tier=backend"], &daemon);
    let web = Ctr::run(&format!("web-{run}"), &["app=web"], &daemon);
    let named_ctr = Ctr::run(&format!("named-{run}-1"), &[], &daemon);

    // The label policy grants the billing container, and the role's name
    // carries the container's.
    let lease = issued(&billing.lessor(&["creds", &role, "--format", "json"]));
    let username = lease["credential"]["username"].as_str().unwrap().to_string();
    assert!(username.starts_with(&format!("v_{role}_billing_{run}_")), "{username}");
    assert!(db.role_exists(&username).await, "{username} is in pg_roles");
    let got = daemon.client().lease_get(lease["lease_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(got.body["owner"]["policy"], "billing", "{:?}", got.body);

    // The same image labelled app=web, and the same binary on the host
    // (as a user no policy names): refused, nothing made.
    refused(&web.lessor(&["creds", &role]), "its label is app=web");
    refused(&daemon.as_nobody(LESSOR).args(["creds", &role]).output().unwrap(), "it is not in a container");
    refused(&billing.lessor(&["creds", &named]), "billing's name is not named-*");

    // Image and name.
    let lease = issued(&named_ctr.lessor(&["creds", &named, "--format", "json"]));
    assert!(db.role_exists(lease["credential"]["username"].as_str().unwrap()).await);
    refused(&named_ctr.lessor(&["creds", &role]), "it has no app label");

    // Root in a container is no admin (the trust rule, in a real one).
    for args in [vec!["tidy"], vec!["lease", "revoke", "--prefix", &format!("{role}/"), "--force"]] {
        let out = billing.lessor(&args);
        assert!(!out.status.success(), "root in a container could `{args:?}`");
        assert!(text(&out).contains("only on the host"), "{}", text(&out));
    }
    assert!(db.role_exists(&username).await, "the container's tries left the role alone");

    // The log line and the audit record name the container and its image.
    let log = daemon.log();
    assert!(
        log.contains(&format!("container_name=\"billing-{run}\"")),
        "the request log names the container"
    );
    assert!(log.contains("image=\"localhost/lessor-busybox:test\""), "the request log names the image");
    let records = std::fs::read_to_string(&audit_log).unwrap();
    let record = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r.to_string().contains(&format!("billing-{run}")))
        .expect("an audit record of the billing container");
    let actor = record.to_string();
    assert!(
        actor.contains("\"container_name\"") && actor.contains("localhost/lessor-busybox:test"),
        "{record}"
    );
    assert!(actor.contains(&billing.id()), "the record has the container id: {record}");

    // A container the engine does not know (a cgroup of a container id
    // only root could make, but no container): no attributes, no guess.
    let tree = TestCgroup::new(&format!("lessor-t-{}", rand_suffix(8)));
    let fake = tree.make(&format!("libpod-{}", "e".repeat(64)));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{}exec {LESSOR} creds {role}", TestCgroup::enter(&fake)))
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    refused(&out, "the engine does not know its container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_engine_down_container_keys_match_nobody_and_host_policies_still_work() {
    let db = TestDb::create().await;
    let mut engine = Engine::start().await;
    let (role, prefix) = unique_role("ctrd");
    db.track_prefix(&prefix);
    let run = rand_suffix(6);
    let body = format!(
        "{}\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        containers_section(&engine),
        policy("billing", "label.app = \"billing\"", &[&format!("creds:{role}")], ""),
        policy("nobody", "uid = 65534", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let first = Ctr::run(&format!("billing-a-{run}"), &["app=billing"], &daemon);
    issued(&first.lessor(&["creds", &role, "--format", "json"]));

    engine.stop();
    // A container the daemon has not asked about yet: its labels cannot be
    // read, so the label policy does not match it.
    let second = Ctr::run(&format!("billing-b-{run}"), &["app=billing"], &daemon);
    refused(&second.lessor(&["creds", &role]), "the engine is down");
    // The one asked about before, once its answer is older than cache_ttl.
    wait_for("the cached answer to run out", Duration::from_secs(60), || async {
        (!first.lessor(&["creds", &role]).status.success()).then_some(())
    })
    .await;
    let host = issued(&daemon.as_nobody(LESSOR).args(["creds", &role, "--format", "json"]).output().unwrap());
    assert!(
        db.role_exists(host["credential"]["username"].as_str().unwrap()).await,
        "host policies still work"
    );
    let log = daemon.log();
    assert!(
        log.contains("cannot ask the container engine") && log.contains("match no caller until it answers"),
        "the log says why"
    );

    engine.restart().await;
    issued(&second.lessor(&["creds", &role, "--format", "json"]));
    assert!(daemon.log().contains("the container engine answers again"));
}
