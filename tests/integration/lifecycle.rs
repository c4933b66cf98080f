//! Issue, use, renew, revoke and expire PostgreSQL credentials.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::common::*;

fn config(db: &TestDb, role: &str) -> String {
    format!(
        "{}\n{}",
        pg_connection(db, None),
        pg_role(role, "1h", "2h", &[CREATE_ROLE, "GRANT SELECT ON TABLE items TO \"{{name}}\""])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_login_revoke_terminates_sessions() {
    let db = TestDb::create().await;
    db.su
        .batch_execute(&format!(
            "CREATE TABLE items (n int); INSERT INTO items VALUES (7); ALTER TABLE items OWNER TO {}",
            db.admin
        ))
        .await
        .unwrap();
    let (role, prefix) = unique_role("life");
    db.track_prefix(&prefix);
    let daemon = Daemon::start(&db, &config(&db, &role)).await;
    let client = daemon.client();

    let issued = client.creds(&role, Some("10m")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    assert!(lease_id.starts_with(&format!("{role}/")));
    assert!(username.starts_with(&prefix));
    assert_eq!(password.len(), 32);
    assert_eq!(issued.body["ttl_seconds"], 600);
    assert!(db.role_exists(&username).await);

    // The password was sent as a SCRAM verifier, and logging in works.
    let stored = db.stored_password(&username).await;
    assert!(stored.starts_with("SCRAM-SHA-256$"), "stored password is not a SCRAM verifier");
    let session = db.login(&username, &password).await.expect("login as the issued user");
    let n: i32 = session.query_one("SELECT n FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
    if std::env::var("LESSOR_TEST_PG_URL").is_ok() {
        assert!(db.login(&username, "not-the-password").await.is_err(), "a wrong password must be refused");
    }

    // The lease is visible, without any secret.
    let shown = client.lease_get(&lease_id).await.unwrap();
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["state"], "active");
    assert_eq!(shown.body["username"], username.as_str());
    assert!(!shown.body.to_string().contains(&password));

    // Revoke: the role is gone and the open session was ended.
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!db.role_exists(&username).await, "role still exists after revoke");
    assert!(session.query_one("SELECT 1", &[]).await.is_err(), "the open session survived revocation");
    assert_eq!(client.lease_get(&lease_id).await.unwrap().body["state"], "revoked");

    // Revoking again is success.
    let again = client.revoke(&lease_id).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.body["outcome"], "already_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_revokes_itself() {
    let db = TestDb::create().await;
    db.su
        .batch_execute(&format!("CREATE TABLE items (n int); ALTER TABLE items OWNER TO {}", db.admin))
        .await
        .unwrap();
    let (role, prefix) = unique_role("ttl");
    db.track_prefix(&prefix);
    let daemon = Daemon::start(&db, &config(&db, &role)).await;
    let issued = daemon.client().creds(&role, Some("2s")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    assert!(db.role_exists(&username).await);
    wait_for("the expired role to be dropped", Duration::from_secs(20), || async {
        (!db.role_exists(&username).await).then_some(())
    })
    .await;
    // The store records the revocation just after the backend's drop.
    wait_for("the expired lease to be recorded revoked", Duration::from_secs(20), || async {
        (daemon.client().lease_get(&lease_id).await.unwrap().body["state"] == "revoked").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_moves_valid_until_and_is_capped() {
    let db = TestDb::create().await;
    db.su
        .batch_execute(&format!("CREATE TABLE items (n int); ALTER TABLE items OWNER TO {}", db.admin))
        .await
        .unwrap();
    let (role, prefix) = unique_role("renew");
    db.track_prefix(&prefix);
    let daemon = Daemon::start(&db, &config(&db, &role)).await;
    let client = daemon.client();
    let issued = client.creds(&role, Some("5m")).await.unwrap();
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let first: DateTime<Utc> = issued.body["expires_at"].as_str().unwrap().parse().unwrap();
    let until = db.valid_until(&username).await.expect("VALID UNTIL set");
    assert!((until - first).num_seconds().abs() <= 1, "VALID UNTIL {until} vs expiry {first}");

    let renewed = client.renew(&lease_id, Some("30m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    let second: DateTime<Utc> = renewed.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(second > first + chrono::Duration::minutes(20), "{second} vs {first}");
    let until = db.valid_until(&username).await.unwrap();
    assert!((until - second).num_seconds().abs() <= 1, "VALID UNTIL {until} vs renewed expiry {second}");
    let shown = client.lease_get(&lease_id).await.unwrap();
    assert_eq!(shown.body["expires_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), second);

    // Past max_ttl (2h from issuance): capped.
    let capped = client.renew(&lease_id, Some("10h")).await.unwrap();
    assert_eq!(capped.status, 200, "{:?}", capped.body);
    let third: DateTime<Utc> = capped.body["expires_at"].as_str().unwrap().parse().unwrap();
    let max: DateTime<Utc> = capped.body["max_expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(third, max);
    // The cap is max_ttl (2h) from issuance exactly, as the store keeps it.
    let shown = client.lease_get(&lease_id).await.unwrap();
    let issued_at: DateTime<Utc> = shown.body["issued_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(max, issued_at + chrono::Duration::hours(2), "max_expires_at is not issued_at + max_ttl");
    assert!(first < max);
    let until = db.valid_until(&username).await.unwrap();
    assert!((until - max).num_seconds().abs() <= 1);

    // An absurd increment is capped too, not an overflow.
    let huge = client.renew(&lease_id, Some("100000000d")).await.unwrap();
    assert_eq!(huge.status, 200, "{:?}", huge.body);
    assert_eq!(huge.body["expires_at"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_direct_grants_all_succeed() {
    let db = TestDb::create().await;
    db.su
        .batch_execute(&format!("CREATE TABLE items (n int); ALTER TABLE items OWNER TO {}", db.admin))
        .await
        .unwrap();
    let (role, prefix) = unique_role("grant");
    db.track_prefix(&prefix);
    let daemon = Daemon::start(&db, &config(&db, &role)).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = daemon.client();
        let role = role.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..5 {
                let r = client.creds(&role, None).await.unwrap();
                statuses.push((r.status, r.body.to_string()));
            }
            statuses
        }));
    }
    let mut issued = 0;
    for task in tasks {
        for (status, body) in task.await.unwrap() {
            assert_eq!(status, 200, "{body}");
            issued += 1;
        }
    }
    assert_eq!(issued, 40);
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 40);
}
