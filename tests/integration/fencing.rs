//! Two nodes on one PostgreSQL store and one static account: a rotation
//! on node A stalls in the backend, node A stops (SIGSTOP) past its claim,
//! node B rotates in an emergency, node A resumes. The claim fences A off:
//! it neither writes its stale state nor touches the backend again, and it
//! says it lost the claim. While A holds the claim, B answers 409. And what
//! arrives by `LISTEN` is a hint: forged notifications reach no watcher
//! and move no deadline.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::rotation::{make_pg_users, seal_key, static_account};

const SETTLE: Duration = Duration::from_secs(30);

/// The `[server]` lines of node `node` on the test database as the store.
pub(crate) fn store_lines(db: &TestDb, node: &str, timeout: &str) -> String {
    format!(
        "store = {:?}\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = {node:?}\nnode_timeout = {timeout:?}",
        db.admin_url()
    )
}

/// The account's row in the store, every column as text, claim columns
/// apart: what a write would change.
async fn static_row(db: &TestDb, name: &str) -> String {
    db.su
        .query_one(
            "SELECT concat_ws('|', version, current_username, md5(current_sealed), rotated_at, previous_username, \
             previous_valid_until, pending_version, pending_phase, failures, last_error) \
             FROM static_accounts WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Milliseconds left on the account's claim by the store's clock, and its holder.
async fn claim_left(db: &TestDb, name: &str) -> (Option<String>, Option<i64>) {
    let row = db
        .su
        .query_one(
            "SELECT claimed_by, claim_until - lessor_now_ms() FROM static_accounts WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A lease's state and deadline (epoch ms) in the store.
async fn lease_row(db: &TestDb, id: &str) -> (String, i64) {
    let r = db.su.query_one("SELECT state, expires_at FROM leases WHERE id = $1", &[&id]).await.unwrap();
    (r.get(0), r.get(1))
}

fn credential(body: &Value) -> (String, String) {
    let c = &body["credential"];
    (c["username"].as_str().unwrap().to_string(), c["password"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stalled_past_its_rotation_claim_is_fenced_off_after_another_nodes_emergency_rotation() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6).to_lowercase();
    db.track_prefix(&format!("fn_{sfx}"));
    let (ua, ub) = (format!("fn_{sfx}_a"), format!("fn_{sfx}_b"));
    make_pg_users(&db, &[&ua, &ub]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account("billing", "pg", "alternating", &[&ua, &ub], "overlap = \"1h\"")
    );
    // A claim lasts the node timeout: 2 s here, renewed every ~0.7 s.
    let a = Daemon::start_on_store(&db, Some(&store_lines(&db, "fa", "2s")), &body, &[]).await;
    let b = Daemon::start_on_store(&db, Some(&store_lines(&db, "fb", "2s")), &body, &[]).await;
    let v1 = crate::rotation::settled(&a, "billing", 1).await;
    let (old_user, old_password) = credential(&v1);
    let next = if old_user == ua { &ub } else { &ua };

    // The test holds the row of `next` in pg_authid: A's ALTER ROLE waits.
    let locker = connect(&pg_url()).await;
    locker.batch_execute(&format!("BEGIN; ALTER ROLE \"{next}\" CONNECTION LIMIT -1")).await.unwrap();
    let stalled = tokio::spawn({
        let client = a.client();
        async move { client.static_rotate("billing", Some("scheduled by hand"), None).await.unwrap() }
    });
    wait_for("A's ALTER ROLE to wait on the test's lock", SETTLE, || async {
        let waiting: i64 = db
            .su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND usename = $1 AND query LIKE 'ALTER ROLE%'",
                &[&db.admin],
            )
            .await
            .unwrap()
            .get(0);
        (waiting == 1).then_some(())
    })
    .await;

    // A renews its claim while its backend call stalls (by the store's
    // clock: more than a whole claim's length goes by), and B is told 409.
    let (holder, first_left) = claim_left(&db, "billing").await;
    assert_eq!(holder.as_deref(), Some("fa"));
    let claimed_at = std::time::Instant::now();
    wait_for("A to renew its claim past its first length", SETTLE, || async {
        let (holder, left) = claim_left(&db, "billing").await;
        let renewed = claimed_at.elapsed() > Duration::from_millis(2500) && left.unwrap_or(0) > 0;
        (holder.as_deref() == Some("fa") && renewed).then_some(())
    })
    .await;
    assert!(first_left.unwrap() <= 2000, "the claim lasts the node timeout: {first_left:?} ms");
    let refused = b.client().static_rotate("billing", Some("laptop stolen"), Some("0s")).await.unwrap();
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "rotation_in_progress", "{}", refused.body);

    // A stops; its ALTER ROLE then goes through on the server (A does not
    // hear of it yet), and its claim lapses by the store's clock.
    a.signal(libc::SIGSTOP);
    locker.batch_execute("ROLLBACK").await.unwrap();
    wait_for("A's claim to lapse", SETTLE, || async {
        let (_, left) = claim_left(&db, "billing").await;
        (left.unwrap_or(-1) < 0).then_some(())
    })
    .await;

    // B's emergency rotation runs to the end. (B's scheduler may take the
    // lapsed claim first, to finish the rotation A left half-way: B then
    // answers 409 until that is done, and the emergency comes after it.)
    let emergency = wait_for("B's emergency rotation", SETTLE, || async {
        let r = b.client().static_rotate("billing", Some("laptop stolen"), Some("0s")).await.unwrap();
        match r.status {
            200 => Some(r.body),
            409 => None,
            status => panic!("B's emergency rotation answered {status}: {}", r.body),
        }
    })
    .await;
    let version = emergency["version"].as_u64().unwrap();
    assert!(version >= 2, "{emergency}");
    let latest = crate::rotation::settled(&b, "billing", version).await;
    let (user, password) = credential(&latest);
    let row_after_b = static_row(&db, "billing").await;
    let verifiers_after_b = (db.stored_password(&ua).await, db.stored_password(&ub).await);

    // A resumes: it finds its claim gone, says so, and stops.
    a.signal(libc::SIGCONT);
    // (Had A been stopped inside a store transaction, the store ended it
    // meanwhile; A's write is sent again on a new connection and fenced.)
    let answer = stalled.await.unwrap();
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.body["error"]["code"], "rotation_claim_lost", "{}", answer.body);
    wait_for("A to log that it lost the claim", SETTLE, || async {
        a.log().contains("lost the rotation claim").then_some(())
    })
    .await;

    // The store holds B's version, written by B alone; the backend has B's
    // passwords, and the emergency ended the old credential.
    assert_eq!(static_row(&db, "billing").await, row_after_b, "A wrote nothing after it lost the claim");
    assert!(row_after_b.starts_with(&format!("{version}|")), "{row_after_b}");
    let verifiers = (db.stored_password(&ua).await, db.stored_password(&ub).await);
    assert_eq!(verifiers, verifiers_after_b, "A set (or rolled back) no password after it lost the claim");
    db.login(&user, &password).await.expect("B's credential logs in");
    assert!(db.login(&old_user, &old_password).await.is_err(), "the emergency ended the old credential");
    let seen_by_a = crate::rotation::settled(&a, "billing", version).await;
    assert_eq!(seen_by_a["version"], version);
    assert_eq!(seen_by_a["rotated_at"], latest["rotated_at"], "both nodes hand out B's version");
    assert_eq!(credential(&seen_by_a), (user, password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_on_the_store_reach_no_watcher_and_move_no_deadline() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6).to_lowercase();
    db.track_prefix(&format!("fg_{sfx}"));
    let (ua, ub) = (format!("fg_{sfx}_a"), format!("fg_{sfx}_b"));
    make_pg_users(&db, &[&ua, &ub]).await;
    let (role, prefix) = unique_role("forged");
    db.track_prefix(&prefix);
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "1h", &[CREATE_ROLE]),
        static_account("billing", "pg", "alternating", &[&ua, &ub], "overlap = \"1h\"")
    );
    let a = Daemon::start_on_store(&db, Some(&store_lines(&db, "ga", "3s")), &body, &[]).await;
    let b = Daemon::start_on_store(&db, Some(&store_lines(&db, "gb", "3s")), &body, &[]).await;
    crate::rotation::settled(&a, "billing", 1).await;
    let issued = a.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{}", issued.body);
    let (id, username) = (
        issued.body["lease_id"].as_str().unwrap().to_string(),
        issued.body["credential"]["username"].as_str().unwrap().to_string(),
    );
    let before = lease_row(&db, &id).await;

    // A watcher on B records the rotations it is told of.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
    let opened: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
    let watcher = tokio::spawn({
        let (client, seen, opened) = (b.client(), seen.clone(), opened.clone());
        async move {
            let _ = client
                .watch(move |event: Value| {
                    opened.store(true, std::sync::atomic::Ordering::SeqCst);
                    if event["event"] == "rotated" {
                        seen.lock().unwrap().push(event["version"].as_u64().unwrap());
                    }
                    true
                })
                .await;
        }
    });
    // The stream opens with a snapshot: from then on, B's events reach it.
    wait_for("B's watch stream to open", SETTLE, || async {
        opened.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;

    // A plain client of the store forges a rotation of A's and deadlines
    // for A's lease: due at once, then ended.
    let forger = &db.su;
    let rotated = serde_json::json!({"node": "ga", "event": {"Rotated": {
        "account": "billing", "version": 999, "username": ua, "rotated_at": "2030-01-01T00:00:00Z",
        "previous_username": null, "previous_valid_until": null, "next_rotation_at": null}}});
    forger.execute("SELECT pg_notify('lessor_events', $1)", &[&rotated.to_string()]).await.unwrap();
    for payload in
        [format!("active {id} ga 0 {}", before.1), format!("revoked {id} ga {} {}", before.1, before.1)]
    {
        forger.execute("SELECT pg_notify('lessor_leases', $1)", &[&payload]).await.unwrap();
    }
    // A real rotation still reaches B's watchers (after the forged notices:
    // one connection delivers them in order).
    let real = a.client().static_rotate("billing", Some("real"), None).await.unwrap();
    assert_eq!(real.status, 200, "{}", real.body);
    let version = real.body["version"].as_u64().unwrap();
    wait_for("B's watcher to see the real rotation", SETTLE, || async {
        seen.lock().unwrap().contains(&version).then_some(())
    })
    .await;
    watcher.abort();
    assert_eq!(*seen.lock().unwrap(), vec![version], "B's watcher saw only the real rotation");
    assert!(
        b.log().contains("dropped a rotation event the store does not confirm"),
        "B says why: {}",
        b.log()
    );

    // The lease is untouched: active, same deadline, its user there.
    assert_eq!(lease_row(&db, &id).await, before);
    assert!(db.role_exists(&username).await, "the lease's user is still there");
}
