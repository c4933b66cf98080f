//! Irreversible admin actions (revoke by prefix, force, static and root
//! rotations, tidy, revoke-sessions), native and Vault: an intent record is
//! synced before the action starts and the request's record is its outcome;
//! when the intent cannot be written, nothing is done.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use crate::common::*;
use crate::rotation::{make_pg_users, seal_key, settled, static_account};

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The intent and outcome records of the last request recorded as
/// `request` (its method and route), checked for their order and shape.
fn intent_and_outcome(log: &Path, request: &str) -> (Value, Value) {
    let all = records(log);
    let outcome = all
        .iter()
        .rev()
        .find(|r| r["action"] == request)
        .unwrap_or_else(|| panic!("no record of {request}"))
        .clone();
    let id = outcome["intent_id"].as_str().unwrap_or_else(|| panic!("{request}: no intent_id in {outcome}"));
    let intents: Vec<&Value> =
        all.iter().filter(|r| r["intent_id"] == id && r["phase"] == "intent").collect();
    assert_eq!(intents.len(), 1, "{request}: one intent record for {id}");
    let intent = intents[0].clone();
    assert!(intent["seq"].as_u64() < outcome["seq"].as_u64(), "{request}: the intent came after the outcome");
    assert_eq!(intent["outcome"], "pending", "{intent}");
    assert_eq!(intent["actor"]["uid"], 0, "{intent}");
    (intent, outcome)
}

/// Checks that the last `request` was announced as `action` on `target`
/// and answered `status`; returns the intent record.
fn announced(log: &Path, request: &str, action: &str, target: &str, status: u16) -> Value {
    let (intent, outcome) = intent_and_outcome(log, request);
    assert_eq!(
        (intent["action"].as_str(), intent["target"].as_str()),
        (Some(action), Some(target)),
        "{intent}"
    );
    assert_eq!(outcome["phase"], "outcome", "{outcome}");
    assert_eq!(outcome["status"].as_u64(), Some(status as u64), "{outcome}");
    intent
}

fn verify(path: &Path) {
    let out = Command::new(LESSOR).args(["audit", "verify"]).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irreversible_admin_actions_are_announced_before_they_start_and_closed_after() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("intent");
    db.track_prefix(&prefix);
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("in_{sfx}"));
    let (a, b) = (format!("in_{sfx}_a"), format!("in_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let audit_dir = tempfile::tempdir().unwrap();
    let log = audit_dir.path().join("audit.jsonl");
    let body = format!(
        "audit_log = {log:?}\nseal_key_file = {key:?}\n\n{}tidy = true\ntidy_prefix = \"{prefix}\"\n\
         tidy_grace = \"1h\"\ntidy_interval = \"1h\"\n\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        static_account("billing", "pg", "alternating", &[&a, &b], "overlap = \"1h\""),
        policy("apps", "uid = 65534", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    settled(&daemon, "billing", 1).await;
    let client = daemon.client();
    let issue = || async {
        let r = client.creds(&role, None).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    };
    let call = |method: Method, path: String, body: Option<Value>| {
        let client = daemon.client();
        async move { client.request(method, &path, body.as_ref()).await.unwrap() }
    };

    // Refused callers write no intent: nobody is no admin.
    issue().await;
    let out =
        daemon.as_nobody(LESSOR).args(["lease", "revoke", "--prefix", &format!("{role}/")]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!records(&log).iter().any(|r| r["phase"] == "intent"), "a refused request wrote an intent");

    // Revoke by prefix, native (with force) and Vault's three ways.
    issue().await;
    let r = client.revoke_prefix(&format!("{role}/"), true).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let intent = announced(&log, "POST /v1/leases/revoke", "leases.revoke_prefix", &format!("{role}/"), 200);
    assert!(intent["reason"].as_str().unwrap().starts_with("force"), "{intent}");
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    let vault_prefix = format!("database/creds/{role}");
    for (route, status) in [("revoke-prefix", 204), ("revoke-force", 204)] {
        issue().await;
        let r = call(Method::PUT, format!("/v1/sys/leases/{route}/{vault_prefix}"), None).await;
        assert_eq!(r.status, status, "{route}: {:?}", r.body);
        let request = format!("PUT /v1/sys/leases/{route}/{{*prefix}}");
        let intent = announced(&log, &request, "leases.revoke_prefix", &vault_prefix, status);
        assert_eq!(intent["reason"].as_str().is_some(), route == "revoke-force", "{intent}");
        assert!(db.roles_with_prefix(&prefix).await.is_empty());
    }
    // Queued (`sync: false`): the answer names the intent, and the outcome
    // is written when the revocation is done.
    issue().await;
    let r = call(
        Method::PUT,
        format!("/v1/sys/leases/revoke-prefix/{vault_prefix}"),
        Some(json!({"sync": false})),
    )
    .await;
    assert_eq!(r.status, 202);
    let queued = records(&log)
        .into_iter()
        .rev()
        .find(|r| r["action"] == "PUT /v1/sys/leases/revoke-prefix/{*prefix}")
        .unwrap();
    assert!(queued.get("phase").is_none() && queued["status"] == 202, "{queued}");
    let id = queued["intent_id"].as_str().unwrap().to_string();
    let done = wait_for("the queued revocation's outcome", Duration::from_secs(15), || async {
        records(&log).into_iter().find(|r| r["intent_id"] == id.as_str() && r["phase"] == "outcome")
    })
    .await;
    assert_eq!(
        (done["action"].as_str(), done["outcome"].as_str()),
        (Some("leases.revoke_prefix"), Some("ok"))
    );
    assert!(db.roles_with_prefix(&prefix).await.is_empty());

    // A static account's rotation, native and Vault: announced before the
    // rotation's own record.
    let before = records(&log).len();
    let r = call(Method::POST, "/v1/static/billing/rotate".into(), Some(json!({}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let intent = announced(&log, "POST /v1/static/{name}/rotate", "static.rotate_now", "billing", 200);
    let rotated = wait_for("the rotation's record", Duration::from_secs(15), || async {
        records(&log)
            .into_iter()
            .skip(before)
            .find(|r| r["action"] == "static.rotate" && r["target"] == "billing")
    })
    .await;
    assert!(intent["seq"].as_u64() < rotated["seq"].as_u64(), "the rotation ran before its intent");
    settled(&daemon, "billing", 2).await;
    let r = call(Method::POST, "/v1/database/rotate-role/billing".into(), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    announced(&log, "POST /v1/database/rotate-role/{name}", "static.rotate_now", "billing", 204);
    settled(&daemon, "billing", 3).await;

    // rotate-root, native and Vault.
    let r = call(Method::POST, "/v1/connections/pg/rotate-root".into(), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    announced(&log, "POST /v1/connections/{name}/rotate-root", "connection.rotate_root", "pg", 200);
    let r = call(Method::PUT, "/v1/database/rotate-root/pg".into(), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    announced(&log, "PUT /v1/database/rotate-root/{connection}", "connection.rotate_root", "pg", 204);
    assert!(db.login(&db.admin, &db.admin_password).await.is_err(), "rotate-root did not rotate");

    // Tidy: a dry run changes nothing and announces nothing; a sweep does.
    let intents = |log: &Path| records(log).iter().filter(|r| r["phase"] == "intent").count();
    let counted = intents(&log);
    assert_eq!(client.tidy(None, true).await.unwrap().status, 200);
    assert_eq!(intents(&log), counted, "a dry run wrote an intent");
    let r = client.tidy(None, false).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    announced(&log, "POST /v1/tidy", "tidy.run", "every connection", 200);

    // revoke-sessions: announced even when the backend has none to revoke
    // (a PostgreSQL role); the outcome says so.
    let r = client.revoke_sessions(&role).await.unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    let (_, outcome) = intent_and_outcome(&log, "POST /v1/roles/{role}/revoke-sessions");
    assert_eq!((outcome["outcome"].as_str(), outcome["status"].as_u64()), (Some("failed"), Some(400)));

    verify(&log);
}

/// A tmpfs of its own, unmounted (lazily: the daemon may still hold its
/// file) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = PathBuf::from(format!("/var/tmp/lessor-test-tmpfs-{}", rand_suffix(8)));
        std::fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "lessor-test"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs for the test");
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The audit log on a small tmpfs: the log's last page is brought to
/// nearly full (by requests whose records the test cannot otherwise size),
/// then the rest of the file system is filled. The next record is the
/// revoke-by-prefix's intent, and it cannot be written: nothing is
/// revoked. The health check and the request-time probe know nothing yet
/// (the log has not failed before), so only the intent stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_by_prefix_whose_intent_cannot_be_written_changes_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("intent_fail");
    db.track_prefix(&prefix);
    let tmpfs = Tmpfs::mount("16m");
    let log = tmpfs.0.join("audit.jsonl");
    let body = format!(
        "audit_log = {log:?}\n\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    let mut leases = Vec::new();
    for _ in 0..2 {
        let r = client.creds(&role, None).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        leases.push(r.body["lease_id"].as_str().unwrap().to_string());
    }
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2);

    // Less room left in the log's last page than any record takes (an
    // intent record holds two hashes and an id: well over 200 bytes).
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    for attempt in 0.. {
        let slack = (page - std::fs::metadata(&log).unwrap().len() % page) % page;
        if (1..200).contains(&slack) {
            break;
        }
        assert!(attempt < 20_000, "the log's end never came near a page's end");
        // A recorded request whose record is a little longer or shorter.
        let id = format!("{role}/{}", rand_suffix(1 + attempt % 64));
        assert_eq!(client.lease_get(&id).await.unwrap().status, 404);
    }
    let mut filler = std::fs::File::create(tmpfs.0.join("filler")).unwrap();
    let full = loop {
        if let Err(e) = filler.write(&[0u8; 65536]) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");

    let r = client.revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "audit_unavailable", "{:?}", r.body);
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2, "the backend was touched");

    // Room again: the leases are as they were, and the failed intent left
    // nothing in the log.
    drop(filler);
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    for id in &leases {
        let lease = wait_for("requests to be served again", Duration::from_secs(10), || async {
            let r = client.lease_get(id).await.unwrap();
            (r.status == 200).then_some(r.body)
        })
        .await;
        assert_eq!(lease["state"], "active", "{lease}");
    }
    assert!(!records(&log).iter().any(|r| r["phase"] == "intent"), "the failed intent is in the log");

    let r = client.revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    announced(&log, "POST /v1/leases/revoke", "leases.revoke_prefix", &format!("{role}/"), 200);
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    verify(&log);
}
