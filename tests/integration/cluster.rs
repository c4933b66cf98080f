//! Several nodes on one PostgreSQL store (a database of the password-auth
//! test cluster, or a cluster of its own where the test restarts it): each
//! node a real daemon with its own socket and node_id. A node killed or
//! stopped mid-load loses no lease, each revocation happens once, a
//! scheduled rotation runs once per slot cluster-wide and every node's
//! watchers see it, a store restart under load loses nothing, and (on the
//! store alone) a node taken for dead is fenced off when it comes back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use lessor::lease::{Lease, LeaseId, LeaseState, Owner};
use lessor::store::cluster::Cluster;
use lessor::store::{Claim, LeaseStore, PostgresStore, Write};

use crate::common::*;
use crate::pg_store::store;
use crate::rotation::{make_pg_users, seal_key, static_account};

const REVOKED: &str = "lessor_leases_revoked_total";
const REVOKE_FAILURES: &str = "lessor_revoke_failures_total";

/// The `[server]` lines of node `node` on the test database as the store.
fn store_lines(db: &TestDb, node: &str, timeout: &str) -> String {
    format!(
        "store = {:?}\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = {node:?}\nnode_timeout = {timeout:?}",
        db.admin_url()
    )
}

/// Starts one daemon per node id, each on `store(node)`.
async fn start_nodes(db: &TestDb, ids: &[&str], store: impl Fn(&str) -> String, body: &str) -> Vec<Daemon> {
    let mut nodes = Vec::new();
    for id in ids {
        nodes.push(Daemon::start_on_store(db, Some(&store(id)), body, &[]).await);
    }
    nodes
}

/// Issuances of `role` on every node until `stop`, two callers a node:
/// what each answered 200 (lease id), how many answers were 503, and any
/// other answer (node index, status, body) for the test to judge.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    issued: Arc<Mutex<Vec<String>>>,
    unavailable: Arc<Mutex<u64>>,
    other: Arc<Mutex<Vec<(usize, u16, String)>>>,
}

/// What a [`Load`] saw, once stopped.
struct Answers {
    issued: Vec<String>,
    unavailable: u64,
    other: Vec<(usize, u16, String)>,
}

impl Load {
    fn start(nodes: &[Daemon], role: &str, ttl: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let issued: Arc<Mutex<Vec<String>>> = Arc::default();
        let unavailable: Arc<Mutex<u64>> = Arc::default();
        let other: Arc<Mutex<Vec<(usize, u16, String)>>> = Arc::default();
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for _ in 0..2 {
                let (client, role, ttl) = (node.client(), role.to_string(), ttl.to_string());
                let (stop, issued, unavailable, other) =
                    (stop.clone(), issued.clone(), unavailable.clone(), other.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        // A node killed under the caller ends its callers.
                        let Ok(r) = client.creds(&role, Some(&ttl)).await else { return };
                        match r.status {
                            200 => {
                                issued.lock().unwrap().push(r.body["lease_id"].as_str().unwrap().to_string())
                            }
                            503 => {
                                *unavailable.lock().unwrap() += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            status => other.lock().unwrap().push((n, status, r.body.to_string())),
                        }
                    }
                }));
            }
        }
        Self { stop, tasks, issued, unavailable, other }
    }

    async fn stop(self) -> Answers {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let issued = self.issued.lock().unwrap().clone();
        let unavailable = *self.unavailable.lock().unwrap();
        let other = self.other.lock().unwrap().clone();
        Answers { issued, unavailable, other }
    }

    fn issued(&self) -> usize {
        self.issued.lock().unwrap().len()
    }
}

/// One lease row as the store has it.
#[derive(Debug)]
struct Row {
    node: String,
    state: String,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

async fn lease_rows(store: &tokio_postgres::Client, role: &str) -> BTreeMap<String, Row> {
    let rows = store
        .query("SELECT id, node, state, expires_at, revoked_at FROM leases WHERE role = $1", &[&role])
        .await
        .unwrap();
    let time = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
    rows.iter()
        .map(|r| {
            let row = Row {
                node: r.get(1),
                state: r.get(2),
                expires_at: time(r.get(3)),
                revoked_at: r.get::<_, Option<i64>>(4).map(time),
            };
            (r.get(0), row)
        })
        .collect()
}

/// Waits until every lease of `role` is revoked in the store and the
/// backend has none of its users left.
async fn all_revoked(
    store: &tokio_postgres::Client,
    db: &TestDb,
    role: &str,
    prefix: &str,
    within: Duration,
) {
    wait_for("every lease revoked and every user gone", within, || async {
        let rows = lease_rows(store, role).await;
        let open: Vec<_> = rows.iter().filter(|(_, r)| r.state != "revoked").collect();
        let users = db.roles_with_prefix(prefix).await;
        (open.is_empty() && users.is_empty()).then_some(())
    })
    .await;
}

/// Waits until the revocations counted by `nodes` (plus `before`, what a
/// node no longer running counted) add up to `expected`, the revoked
/// leases. A node counts a revocation just after its write commits, so
/// the last count may trail the store by a moment; more than `expected`
/// is a lease revoked twice, and fails at once.
async fn revocations_counted(nodes: &[&Daemon], before: f64, expected: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut counted = before;
        for node in nodes {
            counted += node.metric(REVOKED).await;
        }
        assert!(
            counted as usize <= expected,
            "{what}: {counted} revocations counted, {expected} revoked leases"
        );
        if counted as usize == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {counted} revocations counted after 30 s, {expected} revoked leases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_leases_and_a_node_killed_mid_load_loses_none() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("cl3");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "8s", "1h", &[CREATE_ROLE]));
    let mut nodes = start_nodes(&db, &["n1", "n2", "n3"], |n| store_lines(&db, n, "3s"), &body).await;

    // `status` lists every node with its heartbeat.
    let health = nodes[2].client().health().await.unwrap();
    let listed: Vec<(&str, bool)> = health.body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap(), n["alive"].as_bool().unwrap()))
        .collect();
    assert_eq!(listed, [("n1", true), ("n2", true), ("n3", true)], "{:?}", health.body);
    assert_eq!(health.body["node"], "n3");

    // A lease of n1: listed on n3 with its node, renewed from n2 and
    // revoked from n3 (root is an admin on every node).
    let long = nodes[0].client().creds(&role, Some("1h")).await.unwrap();
    assert_eq!(long.status, 200, "{:?}", long.body);
    let long_id = long.body["lease_id"].as_str().unwrap().to_string();
    let long_user = long.body["credential"]["username"].as_str().unwrap().to_string();
    let listed = nodes[2].leases().await;
    let seen = listed.iter().find(|l| l["lease_id"] == long_id.as_str()).expect("n1's lease listed on n3");
    assert_eq!(seen["owner"]["node"], "n1");
    let renewed = nodes[1].client().renew(&long_id, Some("2h")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert_valid_until_is(&db, &long_user, &renewed.body).await;
    let revoked = nodes[2].client().revoke(&long_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!db.role_exists(&long_user).await, "revoked from n3, the user is gone");

    // A renewal on one node is honoured by the others: n1's lease, renewed
    // from n3 before its 3 s run out, outlives its old deadline (n1 still
    // had that deadline in its own schedule). Watched until 2 s past it.
    let short = nodes[0].client().creds(&role, Some("3s")).await.unwrap();
    let (short_id, short_user) = (
        short.body["lease_id"].as_str().unwrap().to_string(),
        short.body["credential"]["username"].as_str().unwrap().to_string(),
    );
    let old_deadline: DateTime<Utc> = short.body["expires_at"].as_str().unwrap().parse().unwrap();
    let renewed = nodes[2].client().renew(&short_id, Some("1h")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert_valid_until_is(&db, &short_user, &renewed.body).await;
    while Utc::now() < old_deadline + chrono::Duration::seconds(2) {
        assert!(db.role_exists(&short_user).await, "revoked at its old deadline despite the renewal");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lease = nodes[0].client().lease_get(&short_id).await.unwrap();
    assert_eq!(lease.body["state"], "active", "{:?}", lease.body);
    assert_eq!(nodes[0].client().revoke(&short_id).await.unwrap().status, 200);

    // Load on all three; n2 killed mid-run.
    let load = Load::start(&nodes, &role, "8s");
    wait_for("some leases on every node", Duration::from_secs(20), || async {
        let rows = lease_rows(&db.su, &role).await;
        let on = |n: &str| rows.values().filter(|r| r.node == n && r.state == "active").count();
        (on("n1") >= 5 && on("n2") >= 5 && on("n3") >= 5).then_some(())
    })
    .await;
    // n2 has revoked nothing of the load yet (no lease of it is due): what
    // it did before, it counted.
    let n2_revoked = nodes[1].metric(REVOKED).await;
    nodes[1].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Answers { issued, other, .. } = load.stop().await;
    assert!(issued.len() >= 15, "{} issued", issued.len());
    assert!(other.is_empty(), "answers other than 200 and 503 (node, status, body): {other:?}");

    // Every lease ends, n2's included, with no user left behind.
    all_revoked(&db.su, &db, &role, &prefix, Duration::from_secs(60)).await;
    let rows = lease_rows(&db.su, &role).await;
    for id in &issued {
        assert!(rows.contains_key(id), "lease {id} answered 200 but not in the store");
    }
    let n2_leases: Vec<_> = rows.values().filter(|r| r.node == "n2").collect();
    assert!(n2_leases.len() >= 5, "{n2_leases:?}");
    // On time: n2's by the others no later than the node timeout (3 s)
    // + 2 s after expiry (its pending ones, rolled back, well before);
    // the others' own by their node within 3 s (the tests share 2 cores).
    for (id, row) in rows.iter().filter(|(id, _)| **id != long_id) {
        let late = row.revoked_at.expect("revoked_at") - row.expires_at;
        let bound = chrono::Duration::seconds(if row.node == "n2" { 5 } else { 3 });
        assert!(late <= bound, "{id} of {} revoked {late} after its expiry", row.node);
    }
    // Each revocation once: the survivors' revocations plus what n2 did
    // before it died are exactly the revoked leases.
    revocations_counted(
        &[&nodes[0], &nodes[2]],
        n2_revoked,
        rows.len(),
        "revocations counted over the nodes vs revoked leases",
    )
    .await;
    // n2 is listed dead.
    let health = nodes[0].client().health().await.unwrap();
    let n2 = health.body["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "n2").unwrap().clone();
    assert_eq!(n2["alive"], false, "{n2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_its_timeout_then_continued_does_no_double_work_and_loses_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("clstop");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "4s", "1h", &[CREATE_ROLE]));
    let nodes = start_nodes(&db, &["s1", "s2", "s3"], |n| store_lines(&db, n, "2s"), &body).await;

    let load = Load::start(&nodes, &role, "4s");
    wait_for("leases on every node", Duration::from_secs(20), || async {
        let rows = lease_rows(&db.su, &role).await;
        let on = |n: &str| rows.values().filter(|r| r.node == n).count();
        (on("s1") >= 3 && on("s2") >= 3 && on("s3") >= 3).then_some(())
    })
    .await;
    // Frozen mid-load, for longer than its timeout and its leases' TTL.
    nodes[1].signal(libc::SIGSTOP);
    let stopped = load.issued();
    wait_for("s2's leases to be ended by the others", Duration::from_secs(30), || async {
        let rows = lease_rows(&db.su, &role).await;
        let open = rows.values().filter(|r| r.node == "s2" && r.state != "revoked").count();
        (open == 0).then_some(())
    })
    .await;
    assert!(load.issued() > stopped, "the other nodes kept issuing while s2 was frozen");
    nodes[1].signal(libc::SIGCONT);
    // s2 works again.
    wait_for("s2 to issue again", Duration::from_secs(20), || async {
        let r = nodes[1].client().creds(&role, Some("4s")).await.unwrap();
        (r.status == 200).then_some(())
    })
    .await;
    // The load runs on a while with every node up before it stops.
    let so_far = load.issued();
    wait_for("more issuances with s2 back", Duration::from_secs(60), || async {
        (load.issued() >= so_far + 20).then_some(())
    })
    .await;
    let Answers { issued, other, .. } = load.stop().await;
    // The other answers allowed, both from s2 about an issuance it had in
    // flight when it was frozen: it finds the lease rolled back by another
    // node and says so (409), or its clock ran on through the freeze and
    // the connection it was opening timed out (502). Either way nothing is
    // left behind, which `all_revoked` checks below.
    let in_flight_when_frozen = |(node, status, body): &&(usize, u16, String)| {
        *node == 1 && (*status == 409 || (*status == 502 && body.contains("timed out connecting")))
    };
    let unexpected: Vec<_> = other.iter().filter(|a| !in_flight_when_frozen(a)).collect();
    assert!(unexpected.is_empty(), "unexpected answers (node, status, body): {unexpected:?}");

    all_revoked(&db.su, &db, &role, &prefix, Duration::from_secs(60)).await;
    let rows = lease_rows(&db.su, &role).await;
    for id in &issued {
        assert!(rows.contains_key(id), "lease {id} answered 200 but not in the store");
    }
    let all: Vec<&Daemon> = nodes.iter().collect();
    revocations_counted(&all, 0.0, rows.len(), "each lease revoked once, counted over the nodes").await;
    let mut failures = 0.0;
    for node in &nodes {
        failures += node.metric(REVOKE_FAILURES).await;
    }
    assert_eq!(failures, 0.0, "a revocation failed: double work that errors");
    assert!(nodes[1].log().contains("other nodes may have taken over its work"), "s2 noticed its gap");
}

/// The versions (and when each was made) a watcher saw rotated.
type Seen = Arc<Mutex<Vec<(u64, DateTime<Utc>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_rotation_runs_once_per_slot_on_three_nodes_and_every_node_sees_it() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6).to_lowercase();
    db.track_prefix(&format!("clr_{sfx}"));
    let (a, b) = (format!("clr_{sfx}_a"), format!("clr_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account(
            "shared",
            "pg",
            "alternating",
            &[&a, &b],
            "schedule = \"*/3 * * * * *\"\noverlap = \"1s\""
        ),
    );
    let nodes = start_nodes(&db, &["r1", "r2", "r3"], |n| store_lines(&db, n, "3s"), &body).await;

    // A watcher on every node records the rotated versions it sees.
    let seen: Vec<Seen> = (0..3).map(|_| Arc::default()).collect();
    let mut watchers = Vec::new();
    for (node, seen) in nodes.iter().zip(&seen) {
        let (client, seen) = (node.client(), seen.clone());
        watchers.push(tokio::spawn(async move {
            let _ = client
                .watch(move |event: Value| {
                    if event["event"] == "rotated" && event["account"] == "shared" {
                        let at = event["rotated_at"].as_str().unwrap().parse().unwrap();
                        seen.lock().unwrap().push((event["version"].as_u64().unwrap(), at));
                    }
                    true
                })
                .await;
        }));
    }
    // Four scheduled slots after the first rotation.
    let first = wait_for("the first rotation", Duration::from_secs(20), || async {
        let r = nodes[0].client().static_get("shared").await.unwrap();
        (r.status == 200).then(|| r.body["version"].as_u64().unwrap())
    })
    .await;
    wait_for("four more rotations seen by every node", Duration::from_secs(40), || async {
        seen.iter().all(|s| s.lock().unwrap().iter().filter(|(v, _)| *v > first).count() >= 4).then_some(())
    })
    .await;
    for watcher in watchers {
        watcher.abort();
    }
    for (node, seen) in seen.iter().enumerate() {
        let seen = seen.lock().unwrap().clone();
        let versions: Vec<u64> = seen.iter().map(|(v, _)| *v).filter(|v| *v > first).collect();
        // Every version once, in order, none skipped.
        let expected: Vec<u64> = (first + 1..first + 1 + versions.len() as u64).collect();
        assert_eq!(versions, expected, "node {} saw {seen:?}", node + 1);
        // One rotation per 3 s slot: two nodes running the same slot would
        // rotate back to back, milliseconds apart.
        let times: Vec<DateTime<Utc>> = seen.iter().filter(|(v, _)| *v > first).map(|(_, at)| *at).collect();
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= chrono::Duration::milliseconds(1500), "two rotations {gap} apart: {seen:?}");
        }
    }
    // The credential every node hands out works.
    let r = nodes[2].client().static_get("shared").await.unwrap();
    let (user, password) = (
        r.body["credential"]["username"].as_str().unwrap().to_string(),
        r.body["credential"]["password"].as_str().unwrap().to_string(),
    );
    db.login(&user, &password).await.expect("the rotated credential logs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restarted_under_load_answers_503_then_resumes_with_no_lease_lost() {
    let db = TestDb::create().await;
    let store = StoreCluster::create();
    let (role, prefix) = unique_role("clrs");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "6s", "1h", &[CREATE_ROLE]));
    let url = store.url();
    let lines = |n: &str| format!("store = {url:?}\nnode_id = {n:?}\nnode_timeout = \"10s\"");
    let nodes = start_nodes(&db, &["t1", "t2", "t3"], lines, &body).await;

    let load = Load::start(&nodes, &role, "6s");
    wait_for("some issuances", Duration::from_secs(20), || async { (load.issued() >= 10).then_some(()) })
        .await;
    store.stop();
    wait_for("issuance to answer 503", Duration::from_secs(20), || async {
        (*load.unavailable.lock().unwrap() >= 3).then_some(())
    })
    .await;
    let health = nodes[0].client().health().await.unwrap();
    assert_eq!((health.status, health.body["status"].as_str()), (503, Some("degraded")), "{:?}", health.body);
    store.start();
    let before = load.issued();
    wait_for("issuance to work again on every node", Duration::from_secs(30), || async {
        (load.issued() >= before + 10).then_some(())
    })
    .await;
    let Answers { issued, unavailable, other } = load.stop().await;
    assert!(unavailable >= 3);
    assert!(other.is_empty(), "answers other than 200 and 503 (node, status, body): {other:?}");

    let client = store.connect().await;
    all_revoked(&client, &db, &role, &prefix, Duration::from_secs(60)).await;
    let rows = lease_rows(&client, &role).await;
    for id in &issued {
        assert!(rows.contains_key(id), "lease {id} answered 200 but not in the store");
    }
    for node in &nodes {
        let health = node.client().health().await.unwrap();
        assert_eq!(health.body["status"], "ready", "{:?}", health.body);
    }
}

/// A lease of `node`'s, `pending`, due at `expires_at`.
fn pending_lease(id: &str, node: &str, expires_at: DateTime<Utc>) -> Lease {
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    Lease {
        id: LeaseId::parse(id).unwrap(),
        role: "app".into(),
        connection: "pg".into(),
        username: format!("v_{}", id.replace('/', "_")),
        state: LeaseState::Pending,
        issued_at: now,
        expires_at,
        max_expires_at: expires_at + chrono::Duration::hours(1),
        renewable: true,
        attempts: 0,
        last_error: None,
        owner: Owner { uid: 1000, gid: 1000, pid: None, policy: None, node: Some(node.into()), unit: None },
        plugin_data: None,
        revoked_at: None,
        idempotency: None,
    }
}

/// Records lease `id` of node `a` as pending in `store`, then, unless
/// `pending`, as active.
async fn stored_lease(store: &PostgresStore, id: &LeaseId, expires_at: DateTime<Utc>, pending: bool) {
    assert!(store.write(Write::Insert(pending_lease(id.as_str(), "a", expires_at))).await.unwrap());
    if !pending {
        let activate = Write::Activate { id: id.clone(), plugin_data: None, expires_at: None };
        assert!(store.write(activate).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_fence_a_node_that_comes_back_after_it_was_taken_for_dead() {
    let db = TestDb::create().await;
    let open = |node| {
        let db = &db;
        async move { store(db, node).await.with_node_timeout(Duration::from_secs(1)) }
    };
    // Two stores as two nodes; neither heartbeats after opening, so each
    // counts as dead a second after it opened.
    let (a, b) = (open("a").await, open("b").await);
    let id = LeaseId::parse("app/fenced").unwrap();
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(a.write(Write::Insert(pending_lease(id.as_str(), "a", later))).await.unwrap());
    // While a is alive its pending lease is its own.
    assert!(matches!(b.claim(&id).await.unwrap(), Claim::Held { ref by, .. } if by == "a"));
    assert!(b.claim_due(Duration::ZERO, 10).await.unwrap().is_empty(), "a live node's pending lease");

    // a falls silent: b takes the pending lease over (to roll it back).
    let swept = wait_for("a to count as dead", Duration::from_secs(10), || async {
        let swept = b.claim_due(Duration::ZERO, 10).await.unwrap();
        (!swept.is_empty()).then_some(swept)
    })
    .await;
    assert_eq!(swept, std::slice::from_ref(&id));
    assert!(b.claim_due(Duration::ZERO, 10).await.unwrap().is_empty(), "claimed once");
    assert!(matches!(b.claim(&id).await.unwrap(), Claim::Granted(_)), "b holds it");
    assert!(b.write(Write::StartRevoking { id: id.clone() }).await.unwrap());

    // a comes back (and b is alive): a's writes on the lease are fenced off...
    b.heartbeat().await.unwrap();
    a.heartbeat().await.unwrap();
    assert!(matches!(a.claim(&id).await.unwrap(), Claim::Held { ref by, .. } if by == "b"));
    let activate = Write::Activate { id: id.clone(), plugin_data: None, expires_at: None };
    assert!(!a.write(activate).await.unwrap(), "a cannot activate what b is rolling back");
    assert!(!a.write(Write::Revoked { id: id.clone(), at: Utc::now() }).await.unwrap());
    // ...except the reopening of what it made meanwhile: the lease is a's to
    // revoke, and b's outcome no longer counts.
    assert!(a.write(Write::Reopen { id: id.clone() }).await.unwrap());
    assert!(
        !b.write(Write::Revoked { id: id.clone(), at: Utc::now() }).await.unwrap(),
        "b is fenced off now"
    );
    assert!(a.write(Write::Revoked { id: id.clone(), at: Utc::now() }).await.unwrap());
    let row =
        db.su.query_one("SELECT state, claimed_by FROM leases WHERE id = $1", &[&id.as_str()]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, Option<String>>(1)), ("revoked".into(), None));

    // An expired active lease of a dead node is swept by one node once.
    let due = LeaseId::parse("app/expired").unwrap();
    let past = Utc::now() - chrono::Duration::seconds(5);
    stored_lease(&a, &due, past, false).await;
    let swept = wait_for("a to count as dead again", Duration::from_secs(10), || async {
        let swept = b.claim_due(Duration::ZERO, 10).await.unwrap();
        (!swept.is_empty()).then_some(swept)
    })
    .await;
    assert_eq!(swept, std::slice::from_ref(&due));
    b.heartbeat().await.unwrap();
    assert!(a.claim_due(Duration::ZERO, 10).await.unwrap().is_empty(), "b holds it; b is not dead yet");
    // b releases it (not due after all, say): it is free again.
    b.release(&due).await.unwrap();
    assert!(matches!(a.claim(&due).await.unwrap(), Claim::Granted(_)));
    let nodes = b.nodes().await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_two_nodes_grant_each_lease_to_one() {
    let db = TestDb::create().await;
    let (a, b) = (Arc::new(store(&db, "a").await), Arc::new(store(&db, "b").await));
    // 600 active leases of a, due: enough for the claims to go in batches.
    let past = Utc::now() - chrono::Duration::seconds(5);
    let ids: Vec<LeaseId> = (0..600).map(|i| LeaseId::parse(&format!("app/c{i:03}")).unwrap()).collect();
    for id in &ids {
        stored_lease(&a, &id, past, false).await;
    }
    let missing = LeaseId::parse("app/nowhere").unwrap();
    // Both nodes claim every lease (and one that is not there) at once.
    let claim_all = |store: Arc<PostgresStore>| {
        let ids: Vec<LeaseId> = ids.iter().chain([&missing]).cloned().collect();
        tokio::spawn(async move {
            let claims = ids.iter().map(|id| store.claim(id));
            futures_util::future::join_all(claims).await.into_iter().map(Result::unwrap).collect::<Vec<_>>()
        })
    };
    let (on_a, on_b) = (claim_all(a.clone()), claim_all(b.clone()));
    let (mut on_a, mut on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    assert!(matches!(on_a.pop(), Some(Claim::Missing)) && matches!(on_b.pop(), Some(Claim::Missing)));

    let holders: HashMap<String, Option<String>> = db
        .su
        .query("SELECT id, claimed_by FROM leases", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut granted = [0, 0];
    for ((id, on_a), on_b) in ids.iter().zip(on_a).zip(on_b) {
        let holder = holders[id.as_str()].as_deref();
        match (on_a, on_b) {
            (Claim::Granted(lease), Claim::Held { by, .. }) => {
                assert_eq!((lease.id.as_str(), by.as_str(), holder), (id.as_str(), "a", Some("a")));
                granted[0] += 1;
            }
            (Claim::Held { by, .. }, Claim::Granted(lease)) => {
                assert_eq!((lease.id.as_str(), by.as_str(), holder), (id.as_str(), "b", Some("b")));
                granted[1] += 1;
            }
            other => panic!("lease {id}: granted to both or neither: {other:?}"),
        }
    }
    assert_eq!(granted[0] + granted[1], ids.len(), "{granted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_to_revoke_marks_the_lease_revoking_and_a_plain_claim_does_not() {
    let db = TestDb::create().await;
    let a = Arc::new(store(&db, "a").await);
    let now = Utc::now();
    let (past, future) = (now - chrono::Duration::seconds(5), now + chrono::Duration::hours(1));
    // (name, expiry, state to bring it to, claimed to revoke now, marked)
    let kinds = [
        ("active", future, LeaseState::Active, true, true),
        ("pending", future, LeaseState::Pending, true, true),
        ("retrying", past, LeaseState::Revoking, true, false),
        // An expiry claims plainly: the lease stays as it is.
        ("expired", past, LeaseState::Active, false, false),
        ("rollback", future, LeaseState::Pending, false, false),
    ];
    // One claim at a time (each alone in its statement), then 100 of each
    // kind at once (in batches).
    for (round, copies) in [(0, 1), (1, 100)] {
        let mut cases = Vec::new();
        for (kind, expires, state, to_revoke, marked) in kinds {
            for i in 0..copies {
                let id = LeaseId::parse(&format!("app/{kind}{round}x{i:03}")).unwrap();
                stored_lease(&a, &id, expires, state == LeaseState::Pending).await;
                if state == LeaseState::Revoking {
                    assert!(a.write(Write::StartRevoking { id: id.clone() }).await.unwrap());
                }
                cases.push((id, state, to_revoke, marked));
            }
        }
        let claims = cases.iter().map(|(id, _, to_revoke, _)| {
            let (a, id, to_revoke) = (a.clone(), id.clone(), *to_revoke);
            async move {
                match to_revoke {
                    true => a.claim_to_revoke(&id).await.unwrap(),
                    false => (a.claim(&id).await.unwrap(), false),
                }
            }
        });
        let answers = if copies == 1 {
            let mut answers = Vec::new();
            for claim in claims {
                answers.push(claim.await);
            }
            answers
        } else {
            futures_util::future::join_all(claims).await
        };
        for ((id, before, _, marked), (claim, was_marked)) in cases.iter().zip(answers) {
            let Claim::Granted(lease) = claim else { panic!("{id}: not granted: {claim:?}") };
            assert_eq!((lease.state, was_marked), (*before, *marked), "{id}: the lease as it was");
            let row = db
                .su
                .query_one("SELECT state, claimed_by FROM leases WHERE id = $1", &[&id.as_str()])
                .await
                .unwrap();
            let (state, holder): (String, Option<String>) = (row.get(0), row.get(1));
            let expected = if *marked { "revoking" } else { before.as_str() };
            assert_eq!((state.as_str(), holder.as_deref()), (expected, Some("a")), "{id} in the store");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_writes_sent_together_each_get_their_own_answer() {
    let db = TestDb::create().await;
    let (a, b) = (Arc::new(store(&db, "a").await), Arc::new(store(&db, "b").await));
    let past = Utc::now() - chrono::Duration::seconds(5);
    let ids: Vec<LeaseId> = (0..300).map(|i| LeaseId::parse(&format!("app/r{i:03}")).unwrap()).collect();
    for id in &ids {
        stored_lease(&a, &id, past, false).await;
    }
    // The first 100 are b's now (a's writes on them are fenced off), the
    // next 50 are revoked already, the rest a may record.
    for id in &ids[..100] {
        assert!(matches!(b.claim(id).await.unwrap(), Claim::Granted(_)));
    }
    let earlier = Utc::now() - chrono::Duration::seconds(1);
    for id in &ids[100..150] {
        assert!(a.write(Write::Revoked { id: id.clone(), at: earlier }).await.unwrap());
    }
    // All at once: they reach the writer together and share statements.
    let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let answers = futures_util::future::join_all(ids.iter().map(|id| {
        let a = a.clone();
        let id = id.clone();
        async move { a.write(Write::Revoked { id, at }).await.unwrap() }
    }))
    .await;
    for (i, (id, recorded)) in ids.iter().zip(answers).enumerate() {
        assert_eq!(recorded, i >= 150, "{id}");
        let lease = a.get(id).await.unwrap().unwrap();
        let expected = match i {
            0..100 => (LeaseState::Active, None),
            100..150 => (LeaseState::Revoked, Some(earlier.timestamp_millis())),
            _ => (LeaseState::Revoked, Some(at.timestamp_millis())),
        };
        assert_eq!((lease.state, lease.revoked_at.map(|t| t.timestamp_millis())), expected, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_does_not_wait_on_a_row_a_stopped_node_holds() {
    let db = TestDb::create().await;
    let (a, b) = (Arc::new(store(&db, "a").await), Arc::new(store(&db, "b").await));
    let past = Utc::now() - chrono::Duration::seconds(5);
    let ids: Vec<LeaseId> = (0..20).map(|i| LeaseId::parse(&format!("app/h{i:02}")).unwrap()).collect();
    for id in &ids {
        stored_lease(&a, &id, past, false).await;
    }
    // A transaction left open on one lease's row, as by a node frozen
    // between its writer's BEGIN and COMMIT.
    let (held, others) = (&ids[0], &ids[1..]);
    let frozen = db.login(&db.admin, &db.admin_password).await.unwrap();
    frozen.batch_execute("BEGIN").await.unwrap();
    frozen.execute("UPDATE leases SET attempts = attempts WHERE id = $1", &[&held.as_str()]).await.unwrap();

    // b claims them all at once: the others are granted, the held one is
    // answered busy (by its node) rather than waited for.
    let claims = futures_util::future::join_all(ids.iter().map(|id| b.claim(id)));
    let claims = tokio::time::timeout(Duration::from_secs(20), claims).await.expect("claims answered");
    let mut claims = claims.into_iter().map(Result::unwrap);
    assert!(matches!(claims.next(), Some(Claim::Held { ref by, .. }) if by == "a"));
    assert_eq!(claims.filter(|c| matches!(c, Claim::Granted(_))).count(), others.len());

    // Once the transaction ends, the lease can be claimed.
    frozen.batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(b.claim(held).await.unwrap(), Claim::Granted(_)));
}
