//! MySQL/MariaDB credentials through the real daemon: issue, log in over
//! the MySQL protocol, renew, revoke, expire, a half-failed creation, a
//! kill -9 in the middle of a burst, no secret in trace logs, and the
//! config errors `config check` must name.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mysql_async::prelude::Queryable;

use crate::common::mysql::*;
use crate::common::*;

/// A role on connection `my` that can read the test database's table.
/// Role names here are short: with MySQL's 32-byte limit, the default
/// template shortens a role part longer than 13 bytes, and the tests find
/// users by the whole `v_{role}_` prefix.
fn role_config(db: &MyDb, role: &str, default_ttl: &str, max_ttl: &str) -> String {
    let grant = format!("GRANT SELECT ON `{}`.items TO '{{{{name}}}}'@'%'", db.database);
    format!(
        "{}\n{}",
        db.connection("my", ""),
        my_role(role, "my", default_ttl, max_ttl, &[CREATE_USER, &grant])
    )
}

fn lessor(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(args)
        .env("LESSOR_SOCKET", socket)
        .output()
        .expect("run lessor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_login_revoke_kills_the_open_connection() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mlife");
    db.track_prefix(&prefix);
    let daemon = Daemon::start_with_mysql(None, &db, &role_config(&db, &role, "1h", "2h"), &[]).await;
    let client = daemon.client();

    let issued = client.creds(&role, Some("10m")).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    assert_eq!(issued.body["plugin"], "mysql");
    assert_eq!(issued.body["renewable"], true);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    assert!(username.starts_with(&prefix) && username.len() <= 32, "{username}");
    assert!(db.user_exists(&username).await);

    // Log in over the MySQL protocol and read; a wrong password is refused.
    let mut session = db.login(&username, &password).await.expect("login as the issued user");
    let n: Option<i32> = session.query_first("SELECT n FROM items").await.unwrap();
    assert_eq!(n, Some(7));
    assert!(db.login(&username, "not-the-password").await.is_err(), "a wrong password must be refused");

    // The lease is visible, without the password.
    let shown = client.lease_get(&lease_id).await.unwrap();
    assert_eq!(shown.body["state"], "active");
    assert_eq!(shown.body["connection"], "my");
    assert!(!shown.body.to_string().contains(&password));

    // Revoke: gone from mysql.user, its open connection killed.
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!db.user_exists(&username).await, "user still exists after revoke");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while session.query_drop("SELECT 1").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the user's open connection survived revocation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(db.login(&username, &password).await.is_err(), "login works after revoke");
    let again = client.revoke(&lease_id).await.unwrap();
    assert_eq!(again.body["outcome"], "already_revoked");

    // `--format env` speaks the MySQL client's variables.
    let out = lessor(&daemon.socket, &["creds", &role, "--format", "env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='"))?.strip_suffix('\'').map(str::to_string))
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    };
    db.login(&var("MYSQL_USER"), &var("MYSQL_PWD")).await.expect("login with MYSQL_USER/MYSQL_PWD");
    assert!(var("LESSOR_LEASE_ID").starts_with(&format!("{role}/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_revokes_and_renew_is_capped() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mttl");
    db.track_prefix(&prefix);
    let daemon = Daemon::start_with_mysql(None, &db, &role_config(&db, &role, "1h", "2h"), &[]).await;
    let client = daemon.client();

    let short = client.creds(&role, Some("2s")).await.unwrap();
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    let short_password = short.body["credential"]["password"].as_str().unwrap().to_string();
    let mut session = db.login(&short_user, &short_password).await.expect("login");
    wait_for("the expired user to be dropped", Duration::from_secs(20), || async {
        (!db.user_exists(&short_user).await).then_some(())
    })
    .await;
    assert!(session.query_drop("SELECT 1").await.is_err(), "the expired user's connection survived");
    // The store records the revocation just after the backend's drop.
    let short_id = short.body["lease_id"].as_str().unwrap();
    wait_for("the expired lease to be recorded revoked", Duration::from_secs(20), || async {
        (client.lease_get(short_id).await.unwrap().body["state"] == "revoked").then_some(())
    })
    .await;

    let issued = client.creds(&role, Some("5m")).await.unwrap();
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let first: DateTime<Utc> = issued.body["expires_at"].as_str().unwrap().parse().unwrap();
    let renewed = client.renew(&lease_id, Some("30m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    let second: DateTime<Utc> = renewed.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(second > first + chrono::Duration::minutes(20), "{second} vs {first}");
    let capped = client.renew(&lease_id, Some("10h")).await.unwrap();
    assert_eq!(capped.status, 200, "{:?}", capped.body);
    let third: DateTime<Utc> = capped.body["expires_at"].as_str().unwrap().parse().unwrap();
    let max: DateTime<Utc> = capped.body["max_expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(third, max, "renewal past max_ttl is capped");
    // The cap is max_ttl (2h) from issuance exactly, as the store keeps it.
    let shown = client.lease_get(&lease_id).await.unwrap();
    let issued_at: DateTime<Utc> = shown.body["issued_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(max, issued_at + chrono::Duration::hours(2), "max_expires_at is not issued_at + max_ttl");
    assert!(first < max);
    assert!(db.user_exists(&username).await, "renewing must not touch the user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_failing_half_way_leaves_no_user() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mhalf");
    db.track_prefix(&prefix);
    // The user is made, then the grant fails: the table does not exist.
    let body = format!(
        "{}\n{}",
        db.connection("my", ""),
        my_role(
            &role,
            "my",
            "1h",
            "2h",
            &[CREATE_USER, "GRANT SELECT ON no_such_db.no_such_table TO '{{name}}'@'%'"]
        )
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    for _ in 0..3 {
        let failed = daemon.client().creds(&role, None).await.unwrap();
        assert_eq!(failed.status, 502, "{:?}", failed.body);
        let message = failed.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("creation statement 2 of 2"), "{message}");
        assert!(!message.contains("IDENTIFIED BY"), "statement text in the error: {message}");
    }
    assert!(db.users_with_prefix(&prefix).await.is_empty(), "a half-made user was left");
    // No lease became active; each is rolled back to revoked.
    wait_for("the failed leases to be rolled back", Duration::from_secs(20), || async {
        daemon.leases().await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_leaves_no_orphans() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mcrash");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        db.connection("my", SHORT_OPERATIONS),
        my_role(&role, "my", "1h", "2h", &[CREATE_USER, "DO SLEEP(0.02)"])
    );
    let mut daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    kill_9_during_bursts(&mut daemon, &role, 10, || db.users_with_prefix(&prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_mysql_password() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("msecr");
    let (broken, broken_prefix) = unique_role("mbroke");
    db.track_prefix(&prefix);
    db.track_prefix(&broken_prefix);
    // The second statement fails with the password quoted back by the server.
    let body = format!(
        "{}\n{}\n{}",
        db.connection("my", ""),
        my_role(&role, "my", "1h", "2h", &[CREATE_USER]),
        my_role(&broken, "my", "1h", "2h", &[CREATE_USER, "SELECT {{password}} FROM DUAL"]),
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[("LESSOR_LOG", "trace")]).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    let id = issued.body["lease_id"].as_str().unwrap().to_string();
    assert_eq!(daemon.client().renew(&id, Some("10m")).await.unwrap().status, 200);
    assert_eq!(daemon.client().revoke(&id).await.unwrap().status, 200);

    let failed = daemon.client().creds(&broken, None).await.unwrap();
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    let message = failed.body.to_string();
    assert!(message.contains("[redacted]"), "the server's echo was not scrubbed: {message}");
    wait_for("the failed issuance's rollback", Duration::from_secs(20), || async {
        db.users_with_prefix(&broken_prefix).await.is_empty().then_some(())
    })
    .await;

    let log = daemon.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "trace logging was not on");
    assert!(!log.contains(&password), "an issued password appears in the log");
    assert!(!log.contains(&db.admin_password), "the admin password appears in the log");
    assert!(!log.contains("IDENTIFIED BY"), "a statement with a password appears in the log");
}

#[test]
fn config_check_names_mysql_and_tidy_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[connections.old]
plugin = "mysql"
url = "mysql://lessor_admin@127.0.0.1:3306/"
max_username_length = 16
tidy = true
tidy_prefix = "lessor_"

[connections.leaky]
plugin = "mysql"
url = "mysql://lessor_admin:hunter2@127.0.0.1:3306/"

[connections.untidy]
plugin = "mysql"
url = "mysql://lessor_admin@127.0.0.1:3306/"
tidy = true

[roles.long_name]
connection = "old"
username_template = "lessor_dyn_{role}_{random}"
creation_statements = ["CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'"]

[roles.typo]
connection = "old"
creation_statements = ["CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{passwrod}}'"]

[roles.lost]
connection = "shop"
creation_statements = ["CREATE USER '{{name}}'@'%'"]
"#,
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = path.display().to_string();
    for needle in [
        format!("{file}: roles.long_name.username_template: \"lessor_dyn_{{role}}_{{random}}\""),
        "(the mysql limit is 16 bytes)".to_string(),
        format!(
            "{file}: roles.typo.creation_statements: statement 1: unknown placeholder `{{{{passwrod}}}}`"
        ),
        format!("{file}: roles.lost.connection: unknown connection \"shop\""),
        format!("{file}: connections.leaky.url: the URL contains a password"),
        format!("{file}: connections.old.tidy_prefix: \"lessor_\" matches the admin user \"lessor_admin\""),
        format!("{file}: connections.untidy.tidy_prefix: required when tidy = true"),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "the URL's password was echoed:\n{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[connections.shop]\nplugin = \"mysql\"\nurl = \"mysql://lessor_admin@127.0.0.1:3306/\"\n\
         tidy = true\ntidy_prefix = \"v_\"\n\n[roles.shop_rw]\nconnection = \"shop\"\n\
         creation_statements = [\"CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'\"]\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
