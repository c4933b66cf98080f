//! Revocations due together on one PostgreSQL connection go to the server
//! as one batch; a batch with a lease that cannot be revoked falls back to
//! one by one, so the others are revoked and the error stays on that lease.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::common::mysql::*;
use crate::common::*;

async fn issue(daemon: &Daemon, role: &str, n: usize) -> Vec<(String, String, String)> {
    let client = daemon.client();
    let requests = (0..n).map(|_| client.creds(role, None));
    let mut out = Vec::new();
    for issued in futures_util::future::join_all(requests).await {
        let issued = issued.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        let body = &issued.body;
        out.push((
            body["lease_id"].as_str().unwrap().to_string(),
            body["credential"]["username"].as_str().unwrap().to_string(),
            body["credential"]["password"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_lease_that_cannot_go_revokes_the_others() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("batch");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start_with_env(&db, &body, &[("LESSOR_LOG", "info,lessor_postgres=debug")]).await;

    // A clean batch first: six leases revoked together.
    let clean = issue(&daemon, &role, 6).await;
    let session = db.login(&clean[0].1, &clean[0].2).await.expect("log in as a batched role");
    let out = daemon.client().revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(out.status, 200, "{:?}", out.body);
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a role survived its batch");
    assert!(daemon.log().contains("revoked as one batch"), "{}", daemon.log());
    wait_for("the batched role's session to end", Duration::from_secs(10), || async {
        session.simple_query("SELECT 1").await.is_err().then_some(())
    })
    .await;

    // One role owns a table in a database the admin cannot reach, so
    // neither DROP OWNED nor DROP ROLE can remove it.
    let leases = issue(&daemon, &role, 5).await;
    let (bad_lease, bad_user, _) = leases[2].clone();
    let other = format!("lt_unreachable_{}", rand_suffix(6));
    db.su.batch_execute(&format!("CREATE DATABASE {other}")).await.unwrap();
    db.su.batch_execute(&format!("REVOKE CONNECT ON DATABASE {other} FROM PUBLIC")).await.unwrap();
    let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
    config.dbname(&other);
    let (other_su, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    other_su
        .batch_execute(&format!("CREATE TABLE kept (n int); ALTER TABLE kept OWNER TO \"{bad_user}\""))
        .await
        .unwrap();
    drop(other_su);
    let _ = driver.await;
    let session = db.login(&leases[0].1, &leases[0].2).await.expect("log in as a batched role");

    let out = daemon.client().revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(out.body["revoked"], 4, "{:?}", out.body);
    assert_eq!(db.roles_with_prefix(&prefix).await.into_iter().collect::<Vec<_>>(), vec![bad_user.clone()]);
    assert!(daemon.log().contains("batch failed; revoking one by one"), "{}", daemon.log());
    let shown = daemon.client().lease_get(&bad_lease).await.unwrap();
    assert_ne!(shown.body["state"], "revoked", "{:?}", shown.body);
    let error = shown.body["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("depend"), "the bad lease's error: {error}");
    for (id, _, _) in leases.iter().filter(|(id, _, _)| *id != bad_lease) {
        let shown = daemon.client().lease_get(id).await.unwrap();
        assert_eq!(shown.body["state"], "revoked", "{:?}", shown.body);
        assert!(shown.body["last_error"].is_null(), "another lease took the error: {:?}", shown.body);
    }
    wait_for("the batched role's session to end", Duration::from_secs(10), || async {
        session.simple_query("SELECT 1").await.is_err().then_some(())
    })
    .await;

    // The table gone with its database, the role can go.
    drop(daemon);
    db.su.batch_execute(&format!("DROP DATABASE {other} WITH (FORCE)")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_revokes_a_batch_in_one_go_and_kills_its_sessions() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mbatch");
    db.track_prefix(&prefix);
    let grant = format!("GRANT SELECT ON `{}`.items TO '{{{{name}}}}'@'%'", db.database);
    let body =
        format!("{}\n{}", db.connection("my", ""), my_role(&role, "my", "1h", "2h", &[CREATE_USER, &grant]));
    let daemon =
        Daemon::start_with_mysql(None, &db, &body, &[("LESSOR_LOG", "info,lessor_mysql=debug")]).await;
    let leases = issue(&daemon, &role, 6).await;
    let mut session = db.login(&leases[0].1, &leases[0].2).await.expect("log in as a batched user");
    let out = daemon.client().revoke_prefix(&format!("{role}/"), false).await.unwrap();
    assert_eq!(out.body["revoked"], 6, "{:?}", out.body);
    assert!(db.users_with_prefix(&prefix).await.is_empty(), "a user survived its batch");
    assert!(daemon.log().contains("revoked as one batch"), "{}", daemon.log());
    assert!(session.query_drop("SELECT 1").await.is_err(), "the batched user's session still works");
}
