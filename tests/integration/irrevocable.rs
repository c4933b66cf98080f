//! A lease whose revocation keeps failing: flagged `irrevocable` after six
//! failed attempts, still tried at `server.irrevocable_retry` (by this
//! daemon and by the next one after a restart), and revoked, the role gone
//! from the server, once the backend answers again.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_irrevocable_lease_is_still_retried_after_a_restart_and_finally_revoked() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("irrev");
    db.track_prefix(&prefix);
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let store_dir = tempfile::tempdir().unwrap();
    // A slow cadence of seconds rather than the default hour, so the test
    // sees it act; the fast backoff before it is the production one.
    let server = format!(
        "store = \"sqlite://{}\"\nirrevocable_retry = \"3s\"",
        store_dir.path().join("leases.db").display()
    );
    let body =
        format!("{}\n{}", pg_connection(&db, Some(proxy.port)), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let mut daemon = Daemon::start_on_store(&db, Some(&server), &body, &[]).await;
    let client = daemon.client();
    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let lease =
        |client: lessor_client::Client, id: String| async move { client.lease_get(&id).await.unwrap().body };
    let attempts = |body: &serde_json::Value| body["attempts"].as_u64().unwrap_or(0);

    // The backend stops answering; revoking by hand fails, each attempt
    // counted (with the retries the backoff schedules in between) until
    // the sixth flags the lease.
    proxy.cut();
    wait_for("six failed attempts", Duration::from_secs(120), || async {
        let now = lease(daemon.client(), lease_id.clone()).await;
        if attempts(&now) >= 6 {
            return Some(());
        }
        let revoked = daemon.client().revoke(&lease_id).await.unwrap();
        assert_ne!(revoked.status, 200, "the backend is cut off: {:?}", revoked.body);
        None
    })
    .await;
    let flagged = wait_for("the lease to be flagged irrevocable", Duration::from_secs(30), || async {
        let now = lease(daemon.client(), lease_id.clone()).await;
        (now["state"] == "irrevocable").then_some(now)
    })
    .await;
    assert!(flagged["last_error"].as_str().unwrap_or("").contains("unreachable"), "{flagged}");
    assert!(db.role_exists(&username).await, "the role went while the backend was cut off");

    // Irrevocable is not given up: the slow cadence tries again.
    let before = attempts(&flagged);
    wait_for("a slow retry of the irrevocable lease", Duration::from_secs(60), || async {
        let now = lease(daemon.client(), lease_id.clone()).await;
        (attempts(&now) > before).then_some(())
    })
    .await;

    // Nor by the next daemon: recovery schedules it within one slow period.
    daemon.stop();
    daemon.spawn().await;
    let after_restart = attempts(&lease(daemon.client(), lease_id.clone()).await);
    wait_for("a retry after the restart", Duration::from_secs(60), || async {
        let now = lease(daemon.client(), lease_id.clone()).await;
        (attempts(&now) > after_restart).then_some(())
    })
    .await;
    assert_eq!(lease(daemon.client(), lease_id.clone()).await["state"], "irrevocable");
    assert!(db.role_exists(&username).await);

    // The backend answers again: the next slow retry revokes it for good.
    proxy.restore();
    wait_for("the role to be dropped", Duration::from_secs(60), || async {
        (!db.role_exists(&username).await).then_some(())
    })
    .await;
    wait_for("the lease to be revoked", Duration::from_secs(30), || async {
        (lease(daemon.client(), lease_id.clone()).await["state"] == "revoked").then_some(())
    })
    .await;
}
