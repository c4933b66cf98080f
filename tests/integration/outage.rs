//! A backend that is down when a lease expires: the revocation is retried
//! with backoff and succeeds once the backend is back; nothing is lost.

use std::time::Duration;

use crate::common::mysql::*;
use crate::common::*;

/// A daemon whose one connection goes through a proxy that can cut it, and
/// one lease issued through it with `ttl`.
struct BehindProxy {
    db: TestDb,
    proxy: Proxy,
    daemon: Daemon,
    lease_id: String,
    username: String,
}

async fn lease_behind_proxy(name: &str, ttl: Option<&str>) -> BehindProxy {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role(name);
    db.track_prefix(&prefix);
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let body =
        format!("{}\n{}", pg_connection(&db, Some(proxy.port)), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let issued = daemon.client().creds(&role, ttl).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    BehindProxy { db, proxy, daemon, lease_id, username }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_during_outage_is_retried_until_revoked() {
    let BehindProxy { db, proxy, daemon, lease_id, username } =
        lease_behind_proxy("outage", Some("2s")).await;
    let client = daemon.client();

    proxy.cut();
    // The lease expires while the backend is unreachable: attempts fail and
    // are recorded, the role stays.
    wait_for("a failed revocation attempt", Duration::from_secs(30), || async {
        let lease = client.lease_get(&lease_id).await.unwrap().body;
        (lease["attempts"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    let lease = client.lease_get(&lease_id).await.unwrap().body;
    assert_eq!(lease["state"], "revoking");
    assert!(lease["last_error"].as_str().unwrap_or("").contains("unreachable"), "{lease}");
    assert!(db.role_exists(&username).await);

    proxy.restore();
    wait_for("the role to be dropped after the outage", Duration::from_secs(30), || async {
        (!db.role_exists(&username).await).then_some(())
    })
    .await;
    wait_for("the lease to be revoked", Duration::from_secs(10), || async {
        (client.lease_get(&lease_id).await.unwrap().body["state"] == "revoked").then_some(())
    })
    .await;
}

/// Revoking by hand, three times, while the backend is down leaves one
/// chain of retries: each failed attempt schedules a retry, and the retries
/// of the earlier attempts are dropped when they fall due, so the backoff
/// still spaces the attempts (without that, every leftover retry would be
/// an attempt of its own, and the lease would reach `irrevocable` early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_by_hand_during_an_outage_keeps_one_retry_chain() {
    let BehindProxy { db, proxy, daemon, lease_id, username } = lease_behind_proxy("chain", None).await;
    let client = daemon.client();

    proxy.cut();
    let attempts =
        || async { client.lease_get(&lease_id).await.unwrap().body["attempts"].as_u64().unwrap_or(0) };
    let started = std::time::Instant::now();
    for n in 1..=3 {
        let revoked = client.revoke(&lease_id).await.unwrap();
        assert_ne!(revoked.status, 200, "the backend is down: {:?}", revoked.body);
        assert_eq!(attempts().await, n);
    }
    let third = std::time::Instant::now();
    // Retries are due about 1 s, 2 s and 4 s (± 20 %) after the first,
    // second and third attempt; only the third's may act.
    wait_for("the retry after the third attempt", Duration::from_secs(30), || async {
        (attempts().await >= 4).then_some(())
    })
    .await;
    let waited = third.elapsed();
    assert!(
        waited >= Duration::from_millis(2500),
        "a fourth attempt {waited:?} after the third (the three by hand took {:?}): an earlier retry acted",
        third - started
    );
    assert_eq!(attempts().await, 4, "one retry, not one per attempt by hand");
    assert!(db.role_exists(&username).await);

    proxy.restore();
    wait_for("the role to be dropped after the outage", Duration::from_secs(30), || async {
        (!db.role_exists(&username).await).then_some(())
    })
    .await;
}

/// One black-hole outage against a daemon, whatever the backend: a lease
/// due during it, an issuance attempted during it, and the check that
/// nothing is left once the backend answers again. `users` lists the
/// backend's users under the role's prefix.
async fn through_a_black_hole<F, Fut>(daemon: &Daemon, proxy: &Proxy, role: &str, users: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::collections::BTreeSet<String>>,
{
    let client = daemon.client();
    let due = client.creds(role, Some("2s")).await.unwrap();
    assert_eq!(due.status, 200, "{:?}", due.body);
    let due_id = due.body["lease_id"].as_str().unwrap().to_string();
    let due_user = due.body["credential"]["username"].as_str().unwrap().to_string();

    proxy.black_hole();
    // Issuance is answered (an error: the backend never replies), not left
    // hanging; the bound is generous, the daemon's own deadline decides.
    let stuck = tokio::time::timeout(Duration::from_secs(120), client.creds(role, None))
        .await
        .expect("an issuance into a black hole was never answered")
        .unwrap();
    assert_ne!(stuck.status, 200, "{:?}", stuck.body);
    assert!(stuck.status >= 500, "{:?}", stuck.body);
    // The due lease's revocation fails and is kept for a retry.
    let failing = wait_for("a failed revocation attempt", Duration::from_secs(120), || async {
        let lease = client.lease_get(&due_id).await.unwrap().body;
        (lease["attempts"].as_u64().unwrap_or(0) >= 1).then_some(lease)
    })
    .await;
    assert_ne!(failing["state"], "revoked", "{failing}");
    assert!(users().await.contains(&due_user), "{due_user} went although the backend never answered");

    proxy.restore();
    // Nothing is left: the due lease's user is revoked, and the issuance
    // that failed in the hole left no user behind.
    wait_for("no user left under the role's prefix", Duration::from_secs(120), || async {
        users().await.is_empty().then_some(())
    })
    .await;
    wait_for("the due lease to be revoked", Duration::from_secs(30), || async {
        (client.lease_get(&due_id).await.unwrap().body["state"] == "revoked").then_some(())
    })
    .await;
    // And the backend serves again through lessor.
    let after = client.creds(role, None).await.unwrap();
    assert_eq!(after.status, 200, "{:?}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_black_hole_is_answered_retried_and_leaves_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("holepg");
    db.track_prefix(&prefix);
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let body = format!(
        "{}operation_timeout = \"3s\"\n\n{}",
        pg_connection(&db, Some(proxy.port)),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    through_a_black_hole(&daemon, &proxy, &role, || db.roles_with_prefix(&prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_black_hole_is_answered_retried_and_leaves_nothing() {
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("holemy");
    my.track_prefix(&prefix);
    let proxy = Proxy::start((my.host.clone(), my.port)).await;
    let connection = my
        .connection("my", "operation_timeout = \"3s\"")
        .replace(&format!(":{}/", my.port), &format!(":{}/", proxy.port));
    assert!(connection.contains(&format!(":{}/", proxy.port)), "{connection}");
    let body = format!("{connection}\n{}", my_role(&role, "my", "1h", "2h", &[CREATE_USER]));
    let daemon = Daemon::start_with_mysql(None, &my, &body, &[]).await;
    through_a_black_hole(&daemon, &proxy, &role, || my.users_with_prefix(&prefix)).await;
}
