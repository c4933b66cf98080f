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
        Self::run_with(name, labels, daemon, &[])
    }

    /// [`run`](Self::run), with more `-v` mounts (`SRC:DST`).
    fn run_with(name: &str, labels: &[&str], daemon: &Daemon, mounts: &[String]) -> Self {
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        for mount in mounts {
            args.extend(["-v".into(), mount.clone()]);
        }
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

/// The config most tests here run with: `role` on the test database, the
/// engine, and the `billing` policy (`label.app = "billing"` grants the
/// role), plus `server` lines, `role_extra` lines in the role's section and
/// `more` sections; the daemon's socket open to every user.
#[derive(Default)]
struct Billing<'a> {
    server: &'a str,
    role_extra: &'a str,
    more: &'a str,
}

impl Billing<'_> {
    async fn start(&self, db: &TestDb, engine: &Engine, role: &str) -> Daemon {
        let body = format!(
            "{}\n\n{}\n{}\n{}\n[containers]\nengine = \"docker\"\nsocket = {:?}\ncache_ttl = \"1s\"\n{}\n{}",
            self.server,
            pg_connection(db, None),
            pg_role(role, "1h", "2h", &[CREATE_ROLE]),
            self.role_extra,
            engine.socket(),
            policy("billing", "label.app = \"billing\"", &[&format!("creds:{role}")], ""),
            self.more,
        );
        let daemon = Daemon::start(db, &body).await;
        daemon.open_to_all_users();
        daemon
    }
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
    let more = format!(
        "{}\n{}",
        pg_role(&named, "1h", "2h", &[CREATE_ROLE]),
        policy(
            "by_image",
            &format!("image = \"localhost/lessor-busybox:*\", container_name = \"named-{run}-*\""),
            &[&format!("creds:{named}")],
            ""
        ),
    );
    let daemon = Billing {
        server: &format!("audit_log = {audit_log:?}"),
        role_extra: &format!("username_template = \"v_{role}_{{container}}_{{random}}\""),
        more: &more,
    }
    .start(&db, &engine, &role)
    .await;

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
    let nobody = policy("nobody", "uid = 65534", &[&format!("creds:{role}")], "");
    let daemon = Billing { more: &nobody, ..Billing::default() }.start(&db, &engine, &role).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_one_workload_share_one_lease_until_the_last_is_gone() {
    let db = TestDb::create().await;
    let engine = Engine::start().await;
    let (role, prefix) = unique_role("ctrs");
    db.track_prefix(&prefix);
    let run = rand_suffix(6);
    let shared = "share = \"workload\"\nshare_grace = \"2s\"\nmax_leases = 1";
    let daemon = Billing { role_extra: shared, ..Billing::default() }.start(&db, &engine, &role).await;
    let replicas: Vec<Ctr> = (0..3)
        .map(|i| Ctr::run(&format!("billing-{run}-{i}"), &["app=billing", "tier=api"], &daemon))
        .collect();
    let leases: Vec<Value> =
        replicas.iter().map(|r| issued(&r.lessor(&["creds", &role, "--format", "json"]))).collect();
    let id = leases[0]["lease_id"].as_str().unwrap().to_string();
    let username = leases[0]["credential"]["username"].as_str().unwrap().to_string();
    for lease in &leases {
        assert_eq!(lease["lease_id"], leases[0]["lease_id"], "one lease for the workload");
        assert_eq!(lease["credential"]["password"], leases[0]["credential"]["password"]);
    }
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "one user in the database");
    db.login(&username, leases[2]["credential"]["password"].as_str().unwrap())
        .await
        .expect("the shared login works");

    // Counted once: the role's max_leases of 1 is taken by the whole
    // workload, so another workload (other labels) is refused.
    let other = Ctr::run(&format!("billing-{run}-worker"), &["app=billing", "tier=worker"], &daemon);
    let out = other.lessor(&["creds", &role]);
    assert!(!out.status.success() && text(&out).contains("HTTP 429"), "{}", text(&out));

    // A replica that revokes only lets go; the others keep the login.
    let out = replicas[0].lessor(&["lease", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("released"), "{}", text(&out));
    assert!(db.role_exists(&username).await, "a holder's revoke left the shared login alone");
    let lease = daemon.client().lease_get(&id).await.unwrap();
    assert_eq!(lease.body["state"], "active", "{:?}", lease.body);

    // Every replica gone: revoked once share_grace has passed.
    for replica in &replicas {
        replica.remove();
    }
    wait_for("the shared lease to be revoked", Duration::from_secs(90), || async {
        let lease = daemon.client().lease_get(&id).await.unwrap();
        (lease.body["state"] == "revoked").then_some(())
    })
    .await;
    assert!(!db.role_exists(&username).await, "the shared user is gone");
    assert!(daemon.log().contains("last holder has been gone for share_grace"));
    // The next replica gets a lease of its own.
    let next = Ctr::run(&format!("billing-{run}-3"), &["app=billing", "tier=api"], &daemon);
    let lease = issued(&next.lessor(&["creds", &role, "--format", "json"]));
    assert_ne!(lease["lease_id"].as_str(), Some(id.as_str()));
}

/// A containerd of the test's own (its CRI plugin off), with the test
/// image imported into namespace `k8s.io`.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    async fn start() -> Self {
        // Below /var/tmp: the overlay snapshotter wants a real file system.
        let dir = tempfile::Builder::new().prefix("lessor-ctrd-").tempdir_in("/var/tmp").unwrap();
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let me = Self { dir, child };
        wait_for("containerd to answer", Duration::from_secs(60), || async {
            me.ctr(&["version"]).status.success().then_some(())
        })
        .await;
        let archive =
            std::env::var("LESSOR_TEST_IMAGE_ARCHIVE").expect("LESSOR_TEST_IMAGE_ARCHIVE (scripts/test)");
        let out = me.ctr(&["images", "import", "--base-name", "localhost/lessor-busybox", &archive]);
        assert!(out.status.success(), "ctr images import: {}", text(&out));
        me
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let socket = self.socket().display().to_string();
        let mut all = vec!["-a", &socket, "-n", "k8s.io"];
        all.extend_from_slice(args);
        Command::new("ctr").args(all).stdin(Stdio::null()).output().expect("ctr runs")
    }

    /// Runs a container with a 64-hex-digit id (as the kubelet's are) and
    /// `labels`; returns its id.
    fn run(&self, labels: &[String], daemon: &Daemon) -> String {
        let id: String = (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect();
        let mut args = vec!["run".to_string(), "-d".into()];
        for label in labels {
            args.extend(["--label".into(), label.clone()]);
        }
        for (src, dst) in [
            ("/usr".to_string(), "/usr"),
            (daemon.socket.display().to_string(), "/run/lessor/lessor.sock"),
            (LESSOR.to_string(), "/lessor"),
        ] {
            args.extend(["--mount".into(), format!("type=bind,src={src},dst={dst},options=rbind:ro")]);
        }
        args.extend([
            "--env".into(),
            "LESSOR_SOCKET=/run/lessor/lessor.sock".into(),
            "localhost/lessor-busybox:test".into(),
            id.clone(),
            "sleep".into(),
            "3600".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.ctr(&args);
        assert!(out.status.success(), "ctr run: {}", text(&out));
        id
    }

    fn lessor(&self, id: &str, args: &[&str]) -> Output {
        let exec_id = format!("x{}", rand_suffix(8));
        let mut all = vec!["tasks", "exec", "--exec-id", &exec_id, id, "/lessor"];
        all.extend_from_slice(args);
        self.ctr(&all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let out = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            for _ in 0..50 {
                if self.ctr(&["tasks", "delete", id]).status.success() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.ctr(&["containers", "delete", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The snapshots are overlay mounts: gone with their tasks.
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("state")).status();
    }
}

/// The cluster's service-account key pair, made by openssl: the private
/// key (PEM) and the public key's file.
fn cluster_keys(dir: &Path) -> (Vec<u8>, PathBuf) {
    let (private, public) = (dir.join("sa.key"), dir.join("sa.pub"));
    let out = Command::new("openssl").args(["genrsa", "-out"]).arg(&private).arg("2048").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (std::fs::read(&private).unwrap(), public)
}

/// A kubelet's pods directory with pod `uid`'s projected token naming
/// `account` in `namespace`, signed with `key`.
fn kubelet_pods(key: &[u8], uid: &str, namespace: &str, account: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let pods = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pods.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let volume = pods.path().join(uid).join("volumes/kubernetes.io~projected/kube-api-access-q7x2p");
    std::fs::create_dir_all(&volume).unwrap();
    let claims = serde_json::json!({
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "exp": chrono::Utc::now().timestamp() + 3600,
        "kubernetes.io": {
            "namespace": namespace,
            "pod": { "name": "billing-api-7d4f", "uid": uid },
            "serviceaccount": { "name": account, "uid": "5c1e" },
        },
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key).unwrap();
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
            .unwrap();
    std::fs::write(volume.join("token"), token).unwrap();
    pods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_namespace_service_account_and_container_come_from_containerd_and_the_kubelet() {
    let db = TestDb::create().await;
    let containerd = Containerd::start().await;
    let (role, prefix) = unique_role("k8s");
    db.track_prefix(&prefix);
    let pod_uid = format!("9a1b2c3d-{}", rand_suffix(8));
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = cluster_keys(keys.path());
    let pods = kubelet_pods(&key, &pod_uid, "billing", "billing-api");
    let body = format!(
        "{}\n{}\nusername_template = \"v_{role}_{{k8s_namespace}}_{{random}}\"\n\
         [containers]\nengine = \"containerd\"\nsocket = {:?}\nnamespace = \"k8s.io\"\nkubelet_pods_dir = {:?}\n\
         service_account_keys = {:?}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        containerd.socket(),
        pods.path(),
        public,
        policy(
            "billing",
            "k8s_namespace = \"billing\", k8s_service_account = \"billing-api\", k8s_container = \"api\"",
            &[&format!("creds:{role}")],
            ""
        ),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let cri = |namespace: &str, container: &str, uid: &str| {
        vec![
            format!("io.kubernetes.pod.namespace={namespace}"),
            "io.kubernetes.pod.name=billing-api-7d4f".to_string(),
            format!("io.kubernetes.pod.uid={uid}"),
            format!("io.kubernetes.container.name={container}"),
        ]
    };
    let api = containerd.run(&cri("billing", "api", &pod_uid), &daemon);
    let out = containerd.lessor(&api, &["creds", &role, "--format", "json"]);
    let lease = issued(&out);
    let username = lease["credential"]["username"].as_str().unwrap();
    assert!(username.starts_with(&format!("v_{role}_billing_")), "{username}");
    assert!(db.role_exists(username).await);
    assert!(daemon.log().contains("pod=\"billing/billing-api-7d4f\""), "the request log names the pod");

    // The pod's sidecar (another container name), a pod in another
    // namespace, and a pod whose token names another service account: no.
    let sidecar = containerd.run(&cri("billing", "sidecar", &pod_uid), &daemon);
    refused(&containerd.lessor(&sidecar, &["creds", &role]), "its container is not api");
    let web = containerd.run(&cri("web", "api", &pod_uid), &daemon);
    refused(&containerd.lessor(&web, &["creds", &role]), "its namespace is web, the token's billing");
    let other_uid = format!("0f0e0d0c-{}", rand_suffix(8));
    let _other_pods = kubelet_pods(&key, &other_uid, "billing", "default");
    let unknown = containerd.run(&cri("billing", "api", &other_uid), &daemon);
    refused(&containerd.lessor(&unknown, &["creds", &role]), "no token of its pod lies in kubelet_pods_dir");
}

/// The user end of `tests/fixtures/held_connection.py`: a connection a
/// process in a container made, used from the host.
struct HeldConnection {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl HeldConnection {
    fn listen(handoff: &Path) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(fixture_script())
            .arg("use")
            .arg(handoff)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdin, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(120)).expect("an answer from held_connection.py")
    }

    /// Sends `METHOD PATH`; the status (0 when the connection is closed)
    /// and the body.
    fn request(&mut self, request: &str) -> (u16, Value) {
        writeln!(self.stdin, "{request}").unwrap();
        let line = self.line();
        if line == "closed" {
            return (0, Value::Null);
        }
        let (status, body) = line.split_once(' ').unwrap();
        let body: String = serde_json::from_str(body).unwrap();
        (status.parse().unwrap(), serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/held_connection.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_container_is_removed_gets_nothing_more() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::create().await;
    let engine = Engine::start().await;
    let (role, prefix) = unique_role("ctrh");
    db.track_prefix(&prefix);
    let daemon = Billing::default().start(&db, &engine, &role).await;
    let handoff = tempfile::tempdir().unwrap();
    std::fs::set_permissions(handoff.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = handoff.path().join("handoff.sock");
    let mut held = HeldConnection::listen(&socket);
    wait_for("the handoff socket", Duration::from_secs(60), || {
        let socket = socket.clone();
        async move { socket.exists().then_some(()) }
    })
    .await;
    let name = format!("billing-held-{}", rand_suffix(6));
    let ctr = Ctr::run_with(
        &name,
        &["app=billing"],
        &daemon,
        &[
            format!("{}:/handoff", handoff.path().display()),
            format!("{}:/held.py:ro", fixture_script().display()),
        ],
    );
    let out = podman(&[
        "exec",
        "-d",
        &name,
        "/usr/bin/python3",
        "/held.py",
        "hold",
        "/handoff/handoff.sock",
        "/run/lessor/lessor.sock",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(held.line(), "ready");

    // The connection is the container's process's: its label grants the role.
    let (status, answer) = held.request(&format!("POST /v1/creds/{role}"));
    assert_eq!(status, 200, "{answer}");
    assert!(db.role_exists(answer["credential"]["username"].as_str().unwrap()).await);

    // The container removed, the connection still open: refused, nothing made.
    ctr.remove();
    let (status, answer) = held.request(&format!("POST /v1/creds/{role}"));
    assert!(status == 403 || status == 0, "{status} {answer}");
    if status == 403 {
        assert_eq!(answer["error"]["code"], "identity_changed", "{answer}");
    }
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "nothing was made after the removal");
}
