//! A storm of revocations that hang does not starve issuance: revocations
//! run on their own bounded share of a connection's admin sessions
//! (`revocation_workers`), so while every one of them waits on a lock,
//! eight clients issuing at once are all answered. How fast is the
//! benchmark's business; this test asserts only that they are answered,
//! and that the stuck revocations finish once the lock is let go.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_is_answered_while_every_revocation_hangs_on_a_lock() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("storm");
    db.track_prefix(&prefix);
    let key: i64 = 7_000_000 + i64::from(std::process::id() % 1_000_000);
    let body = format!(
        "{}revocation_workers = 2\noperation_timeout = \"120s\"\n\n{}revocation_statements = [\n  \"SELECT pg_advisory_lock({key})\",\n  \"SELECT pg_advisory_unlock({key})\",\n  \"DROP ROLE IF EXISTS \\\"{{{{name}}}}\\\"\",\n]\n",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();

    // The test holds the lock every revocation statement waits for.
    let locker = db.login(&db.admin, &db.admin_password).await.expect("login as the admin");
    locker.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();

    // A dozen short leases fall due together; both revocation sessions
    // hang on the lock, the rest wait their turn.
    let mut due = Vec::new();
    for _ in 0..12 {
        let issued = client.creds(&role, Some("1s")).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        due.push(issued.body["credential"]["username"].as_str().unwrap().to_string());
    }
    wait_for("both revocation sessions to hang on the lock", Duration::from_secs(60), || async {
        let row = db
            .su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock' \
                 AND strpos(query, 'pg_advisory_lock') > 0",
                &[&db.admin],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) == 2).then_some(())
    })
    .await;

    // Eight clients issue at once, five times each: every one is answered
    // with a credential that exists on the server.
    let issuers: Vec<_> = (0..8)
        .map(|_| {
            let client = daemon.client();
            let role = role.clone();
            tokio::spawn(async move {
                let mut users = Vec::new();
                for _ in 0..5 {
                    let issued = client.creds(&role, None).await.expect("the daemon answers");
                    assert_eq!(issued.status, 200, "{:?}", issued.body);
                    users.push(issued.body["credential"]["username"].as_str().unwrap().to_string());
                }
                users
            })
        })
        .collect();
    let mut issued = Vec::new();
    for issuer in issuers {
        issued.extend(issuer.await.expect("an issuer finished"));
    }
    assert_eq!(issued.len(), 40);
    for user in &issued {
        assert!(db.role_exists(user).await, "{user} was answered but is not on the server");
    }
    // The storm is still on: nothing due has gone yet.
    for user in &due {
        assert!(db.role_exists(user).await, "{user} went while every revocation was stuck");
    }

    // Let go: every due lease is revoked, its role dropped.
    locker.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
    wait_for("every due role to be dropped", Duration::from_secs(120), || async {
        for user in &due {
            if db.role_exists(user).await {
                return None;
            }
        }
        Some(())
    })
    .await;
    for user in &issued {
        assert!(db.role_exists(user).await, "{user} went although its lease runs for an hour");
    }
}
