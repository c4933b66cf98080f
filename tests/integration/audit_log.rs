//! The daemon's audit log: a record for every request and background
//! revocation, the chain `lessor audit verify` checks, no secret in it,
//! and fail-closed requests when it cannot be written.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::rotation::{make_pg_users, seal_key, settled, static_account};

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn verify(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(LESSOR).args(["audit", "verify"]).arg(path).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_expiry_is_recorded_in_a_chain_verify_checks() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("audit");
    db.track_prefix(&prefix);
    let audit_dir = tempfile::tempdir().unwrap();
    let log = audit_dir.path().join("audit.jsonl");
    let (broken, broken_prefix) = unique_role("audit_bad");
    db.track_prefix(&broken_prefix);
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let (a, b) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "audit_log = {log:?}\nseal_key_file = {key:?}\n\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "2s", "1h", &[CREATE_ROLE]),
        pg_role(&broken, "1h", "2h", &[CREATE_ROLE, "SELECT no_such_function()"]),
        static_account("billing", "pg", "alternating", &[&a, &b], "overlap = \"1h\""),
    );
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;
    daemon.open_to_all_users();
    let client = daemon.client();
    let issued = client.creds(&role, Some("1h")).await.unwrap();
    assert_eq!(issued.status, 200);
    let id = issued.body["lease_id"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    assert_eq!(client.renew(&id, Some("30m")).await.unwrap().status, 200);
    assert_eq!(client.revoke(&id).await.unwrap().status, 200);
    let expiring = client.creds(&role, None).await.unwrap();
    let expiring_id = expiring.body["lease_id"].as_str().unwrap().to_string();
    let denied = daemon.as_nobody(LESSOR).args(["creds", &role]).output().unwrap();
    assert!(!denied.status.success());
    let failed = client.creds(&broken, None).await.unwrap();
    assert!(failed.status == 400 || failed.status == 502, "{:?}", failed.body);

    let all = wait_for("the expiry's and the rollback's records", Duration::from_secs(15), || async {
        let all = records(&log);
        let expired =
            all.iter().any(|r| r["action"] == "lease.expire" && r["lease_id"] == expiring_id.as_str());
        let rolled_back =
            all.iter().any(|r| r["action"] == "lease.rollback" && r["target"] == broken.as_str());
        (expired && rolled_back).then_some(all)
    })
    .await;
    assert!(
        all.iter()
            .any(|r| r["action"] == "static.rotate" && r["target"] == "billing" && r["outcome"] == "ok"),
        "no rotation record"
    );
    let failure = all
        .iter()
        .find(|r| {
            r["action"] == "POST /v1/creds/{role}" && r["target"].as_str().unwrap().ends_with(broken.as_str())
        })
        .expect("the failed issuance's record");
    assert_eq!(failure["outcome"], "failed");
    assert_eq!(failure["status"].as_u64(), Some(failed.status as u64));
    let find = |action: &str| {
        all.iter()
            .find(|r| r["action"].as_str().is_some_and(|a| a.starts_with(action)))
            .unwrap_or_else(|| panic!("no {action} in {all:?}"))
    };
    let issue = find("POST /v1/creds/{role}");
    assert_eq!(issue["lease_id"], id.as_str());
    assert_eq!(issue["actor"]["uid"], 0);
    assert_eq!(issue["outcome"], "ok");
    assert!(find("POST /v1/leases/{*rest}")["target"].as_str().unwrap().ends_with("/renew"));
    assert_eq!(find("DELETE /v1/leases/{*rest}")["status"], 200);
    let refused = all.iter().find(|r| r["outcome"] == "denied").expect("the denied request");
    assert_eq!(refused["actor"]["uid"], 65534);
    assert_eq!(refused["actor"]["user"], "nobody");
    assert_eq!(refused["error_code"], "forbidden");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&password), "an issued password is in the audit log");

    let (ok, report) = verify(&log);
    assert!(ok, "{report}");

    // An edited byte, a deleted line and two swapped lines are each caught
    // at their line.
    let lines: Vec<&str> = text.lines().collect();
    let tampered = audit_dir.path().join("tampered.jsonl");
    let mut edited = lines.clone();
    let at = lines.iter().position(|l| l.contains("\"status\":200")).expect("a line with a status");
    let changed = edited[at].replacen("\"status\":200", "\"status\":201", 1);
    edited[at] = &changed;
    let mut deleted = lines.clone();
    deleted.remove(3);
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    for (what, version, line) in [("edit", edited, at + 1), ("deletion", deleted, 4), ("swap", swapped, 4)] {
        std::fs::write(&tampered, version.join("\n") + "\n").unwrap();
        let (ok, report) = verify(&tampered);
        assert!(!ok, "verify passed after a {what}");
        assert!(report.contains(&format!("tampered.jsonl:{line}:")), "{what}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_closed_while_the_audit_log_cannot_be_written() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("audit_fc");
    db.track_prefix(&prefix);
    let audit_dir = tempfile::tempdir().unwrap();
    let log = audit_dir.path().join("audit.jsonl");
    let body = format!(
        "audit_log = {log:?}\n\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);

    // Rotated onto a device that refuses every write (ENOSPC).
    std::fs::rename(&log, audit_dir.path().join("audit.1.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    daemon.signal(libc::SIGHUP);
    let refused = wait_for("a refused issuance", Duration::from_secs(10), || async {
        let r = client.creds(&role, None).await.unwrap();
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(refused.body["error"]["code"], "audit_unavailable", "{:?}", refused.body);
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("audit log cannot be written"));
    let health = client.health().await.unwrap();
    assert_eq!(health.status, 503);
    assert_eq!(health.body["status"], "audit_failing", "{:?}", health.body);
    assert!(health.body["audit"]["error"].is_string(), "{:?}", health.body);
    // Nothing was left in the backend for the refused requests.
    let live = wait_for("the undelivered credential's revocation", Duration::from_secs(10), || async {
        let roles = db.roles_with_prefix(&prefix).await;
        (roles.len() == 1).then_some(roles)
    })
    .await;
    assert_eq!(live.len(), 1);

    // Back on a real file: requests work again.
    std::fs::remove_file(&log).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("issuance to work again", Duration::from_secs(10), || async {
        (client.creds(&role, None).await.unwrap().status == 200).then_some(())
    })
    .await;
    assert_eq!(client.health().await.unwrap().body["status"], "ready");
}
