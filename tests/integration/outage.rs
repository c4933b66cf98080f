//! A backend that is down when a lease expires: the revocation is retried
//! with backoff and succeeds once the backend is back; nothing is lost.

use std::time::Duration;

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
