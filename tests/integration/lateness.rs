//! Leases end on time, as the backend sees it: on the SQLite store and on
//! the PostgreSQL store, each role of a 30 s lease is still on the server
//! a moment before its expiry and gone within a bound after it. The bound
//! (10 s) is generous for a loaded CI machine yet a third of the TTL; the
//! lateness a quiet machine shows (tens of milliseconds) is printed, and
//! measured properly in the benchmark.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::common::*;

/// The most a role may outlive its lease, as the server shows it.
const BOUND: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

/// Issues `n` leases of 30 s and follows their roles on the server: each
/// must exist within a second of its expiry and be gone within [`BOUND`]
/// after it. Returns the lateness of each.
async fn lateness_of(daemon: &Daemon, db: &TestDb, role: &str, n: usize) -> Vec<chrono::TimeDelta> {
    let client = daemon.client();
    let mut leases: Vec<(String, DateTime<Utc>)> = Vec::new();
    for _ in 0..n {
        let issued = client.creds(role, Some("30s")).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
        let expires_at: DateTime<Utc> = issued.body["expires_at"].as_str().unwrap().parse().unwrap();
        leases.push((username, expires_at));
    }
    let mut last_seen: Vec<Option<DateTime<Utc>>> = vec![None; n];
    let mut gone_at: Vec<Option<DateTime<Utc>>> = vec![None; n];
    let give_up = leases.iter().map(|(_, at)| *at).max().unwrap() + BOUND * 3;
    while gone_at.iter().any(Option::is_none) {
        assert!(Utc::now() < give_up, "roles still on the server long after their leases ended: {leases:?}");
        for (i, (username, _)) in leases.iter().enumerate() {
            if gone_at[i].is_some() {
                continue;
            }
            let checked = Utc::now();
            if db.role_exists(username).await {
                last_seen[i] = Some(checked);
            } else {
                gone_at[i] = Some(checked);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leases
        .iter()
        .zip(last_seen.iter().zip(&gone_at))
        .map(|((username, expires_at), (seen, gone))| {
            let seen = seen.unwrap_or_else(|| panic!("{username} was never seen on the server"));
            assert!(
                seen >= *expires_at - chrono::TimeDelta::seconds(1),
                "{username} was gone at {seen}, more than a second before its lease ended at {expires_at}"
            );
            let late = gone.unwrap() - *expires_at;
            assert!(late <= BOUND, "{username} outlived its lease by {late}");
            late
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_end_on_time_on_the_sqlite_store() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("late");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let late = lateness_of(&daemon, &db, &role, 5).await;
    let ms: Vec<i64> = late.iter().map(|l| l.num_milliseconds()).collect();
    eprintln!("SQLite store: roles gone {ms:?} ms after their leases ended (polled every 50 ms)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_end_on_time_on_the_postgres_store() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("latepg");
    db.track_prefix(&prefix);
    let store = format!("store = {:?}\nstore_password_file = \"PASSWORD_FILE\"", db.admin_url());
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start_on_store(&db, Some(&store), &body, &[]).await;
    let late = lateness_of(&daemon, &db, &role, 5).await;
    let ms: Vec<i64> = late.iter().map(|l| l.num_milliseconds()).collect();
    eprintln!("PostgreSQL store: roles gone {ms:?} ms after their leases ended (polled every 50 ms)");
}
