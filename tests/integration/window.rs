//! The expiry window (DESIGN §8): a daemon holds in memory only the
//! deadlines within `server.expiry_window`. Later ones are read from the
//! store as the window moves on, and after a restart; on a shared store a
//! dead node's lease that was beyond every window when it was issued is
//! still revoked by the others.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::common::*;

/// The `[server]` lines of a SQLite store in `dir` with a 2 s window.
fn sqlite_with_window(dir: &std::path::Path) -> String {
    format!("store = \"sqlite://{}\"\nexpiry_window = \"2s\"", dir.join("lessor.db").display())
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap_or_else(|| panic!("not a time: {value}")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_beyond_the_window_are_read_in_as_it_moves_and_after_a_restart() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("win");
    db.track_prefix(&prefix);
    let store_dir = tempfile::tempdir().unwrap();
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "20s", "2h", &[CREATE_ROLE]));
    let mut daemon =
        Daemon::start_on_store(&db, Some(&sqlite_with_window(store_dir.path())), &body, &[]).await;

    // Both expire well past the 2 s window when issued: neither is in the
    // daemon's schedule then, only in the store.
    let issue = |ttl: &'static str| {
        let client = daemon.client();
        let role = role.clone();
        async move {
            let r = client.creds(&role, Some(ttl)).await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            (
                r.body["lease_id"].as_str().unwrap().to_string(),
                r.body["credential"]["username"].as_str().unwrap().to_string(),
            )
        }
    };
    let (short, short_user) = issue("20s").await;
    let (long, long_user) = issue("1h").await;

    // A restart: start-up reads the window, not every lease.
    daemon.stop();
    daemon.spawn().await;
    assert!(daemon.log().contains("window_s=2"), "start-up names its window:\n{}", daemon.log());

    // The short lease's warning and its revocation still come, read in by
    // the window as it moves on.
    let client = daemon.client();
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let watcher = tokio::spawn(async move { client.watch(move |event| sender.send(event).is_ok()).await });
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains(&"lease_revoked".to_string()) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no lease_revoked for {short} within a minute; seen {seen:?}"))
            .expect("the watch goes on");
        if event["event"] == "snapshot" || event["event"] == "heartbeat" {
            continue;
        }
        assert_eq!(event["lease"]["lease_id"], short.as_str(), "{event}");
        seen.push(event["event"].as_str().unwrap().to_string());
    }
    watcher.abort();
    assert_eq!(seen, ["lease_expiring", "lease_revoked"]);

    // In the backend: the short lease's user is gone, the long one's is
    // there; the short lease ended at its expiry, not before.
    assert!(!db.role_exists(&short_user).await, "{short_user} outlived its lease");
    assert!(db.role_exists(&long_user).await, "{long_user} was dropped an hour early");
    let ended = daemon.client().lease_get(&short).await.unwrap();
    assert_eq!(ended.body["state"], "revoked", "{:?}", ended.body);
    assert!(time(&ended.body["revoked_at"]) >= time(&ended.body["expires_at"]), "{:?}", ended.body);
    let kept = daemon.client().lease_get(&long).await.unwrap();
    assert_eq!(kept.body["state"], "active", "{:?}", kept.body);

    // The hour-long lease is in the store only: nothing is scheduled.
    let health = daemon.client().health().await.unwrap();
    assert_eq!(health.body["scheduled_leases"], 0, "{:?}", health.body);
    assert_eq!(daemon.client().revoke(&long).await.unwrap().status, 200);
    assert!(!db.role_exists(&long_user).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_lease_issued_beyond_every_window_is_revoked_by_the_other() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("winc");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "8s", "1h", &[CREATE_ROLE]));
    let store = |node: &str| {
        format!(
            "store = {:?}\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = {node:?}\nnode_timeout = \"3s\"\n\
             expiry_window = \"2s\"",
            db.admin_url()
        )
    };
    let mut n1 = Daemon::start_on_store(&db, Some(&store("n1")), &body, &[]).await;
    let n2 = Daemon::start_on_store(&db, Some(&store("n2")), &body, &[]).await;

    let r = n1.client().creds(&role, Some("8s")).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (id, user) = (
        r.body["lease_id"].as_str().unwrap().to_string(),
        r.body["credential"]["username"].as_str().unwrap().to_string(),
    );
    n1.kill9();

    let (expires_at, revoked_at) = wait_for("n1's lease revoked by n2", Duration::from_secs(60), || async {
        let row = db
            .su
            .query_one("SELECT state, expires_at, revoked_at FROM leases WHERE id = $1", &[&id])
            .await
            .unwrap();
        let (state, expires_at, revoked_at): (String, i64, Option<i64>) =
            (row.get(0), row.get(1), row.get(2));
        (state == "revoked").then(|| (expires_at, revoked_at.unwrap()))
    })
    .await;
    assert!(!db.role_exists(&user).await, "{user} outlived its dead node's lease");
    assert!(revoked_at >= expires_at, "revoked {} ms before its expiry", expires_at - revoked_at);
    assert_eq!(n2.metric("lessor_leases_revoked_total").await, 1.0, "n2 revoked it");
}
