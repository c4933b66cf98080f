//! Faults that must not leave a credential behind or crash the daemon: a
//! backend operation that times out (cancelled on the server, rolled back,
//! checked once more), a credential made for a caller that already gave up,
//! a clock that says a crashed run's lease is from the future, a crashed
//! run's creation that commits after its rollback, forced
//! revokes by non-operators, two daemons on one store, sessions that cannot
//! be ended, and a socket path that is not a socket.

use std::process::{Command, Stdio};
use std::time::Duration;

use lessor::lease::{Lease, LeaseState, Owner};
use lessor::store::{LeaseStore, SqliteStore, Write};
use mysql_async::prelude::Queryable;

use crate::common::mysql::*;
use crate::common::*;

const SETTLE: Duration = Duration::from_secs(60);

/// The state of the lease naming `username`, read from the daemon's store
/// file (read-only, beside the running daemon: WAL allows it).
fn lease_state_of(daemon: &Daemon, username: &str) -> Option<String> {
    let path = daemon.dir.path().join("lessor.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT state FROM leases WHERE username = ?1", [username], |row| row.get(0)).ok()
}

/// The username a failed issuance names in its error message
/// (`… create v_role_abc…: …`).
fn username_in(message: &str) -> String {
    let start =
        message.find("create v_").unwrap_or_else(|| panic!("no username in {message}")) + "create ".len();
    message[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Polls `running` until it reports nothing, for at most 20 s: far above
/// any scheduling delay, and well before the statements the tests make
/// would end by themselves (a minute's sleep, a lock held until the test
/// lets go).
async fn none_left_running<F, Fut>(what: &str, running: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    wait_for(what, Duration::from_secs(20), || async { (running().await == 0).then_some(()) }).await;
}

/// Waits until `username` is gone from the backend (per `exists`) and its
/// lease is `revoked` in the store.
async fn wait_revoked_and_gone<F, Fut>(daemon: &Daemon, username: &str, exists: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(&format!("{username} to be gone and its lease revoked"), SETTLE, || async {
        let revoked = lease_state_of(daemon, username).as_deref() == Some("revoked");
        (revoked && !exists().await).then_some(())
    })
    .await;
}

/// Statements of `admin` still running in PostgreSQL whose text contains `needle`.
async fn pg_running(db: &TestDb, needle: &str) -> usize {
    let row = db
        .su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' \
             AND strpos(query, $2) > 0",
            &[&db.admin, &needle],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as usize
}

/// Statements of `admin` still running in MySQL whose text contains `needle`.
async fn mysql_running(my: &MyDb, needle: &str) -> usize {
    let mut su = mysql_root().await;
    let running: Vec<u64> = su
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND COMMAND = 'Query' \
             AND INSTR(INFO, ?) > 0",
            (my.admin.as_str(), needle),
        )
        .await
        .unwrap();
    running.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_creation_stuck_on_a_pg_authid_lock_is_cancelled_and_leaves_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("lockpg");
    db.track_prefix(&prefix);
    let body = format!(
        "{}operation_timeout = \"1s\"\n\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    // An admin connection in the pool before the lock: opening one needs
    // no write to pg_authid, but this keeps the test about the statement.
    let warm = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(warm.status, 200, "{:?}", warm.body);

    // SHARE conflicts with the ROW EXCLUSIVE that CREATE ROLE takes, not
    // with the reads of logins: other tests' sessions keep working.
    let locker = connect(&pg_url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE pg_authid IN SHARE MODE").await.unwrap();
    let stuck = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(stuck.status, 502, "{:?}", stuck.body);
    let message = stuck.body["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("cancelled on the server"), "{message}");
    none_left_running("lessor's CREATE ROLE to end", || pg_running(&db, "CREATE ROLE")).await;
    let username = username_in(&message);
    locker.batch_execute("COMMIT").await.unwrap();

    wait_revoked_and_gone(&daemon, &username, || db.role_exists(&username)).await;
    let warm_user = warm.body["credential"]["username"].as_str().unwrap();
    assert_eq!(db.roles_with_prefix(&prefix).await, [warm_user.to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_creation_that_sleeps_past_the_timeout_is_cancelled_and_rolled_back() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("sleeppg");
    db.track_prefix(&prefix);
    let body = format!(
        "{}operation_timeout = \"1s\"\n\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE, "SELECT pg_sleep(60)"])
    );
    let daemon = Daemon::start(&db, &body).await;
    let started = std::time::Instant::now();
    let slow = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(slow.status, 502, "{:?}", slow.body);
    // Not a speed check: the statement sleeps a minute, the timeout is 1 s,
    // and half a minute is far above any scheduling delay.
    assert!(started.elapsed() < Duration::from_secs(30), "the answer waited for the sleep to end");
    let message = slow.body["error"]["message"].as_str().unwrap().to_string();
    none_left_running("lessor's pg_sleep to be cancelled", || pg_running(&db, "pg_sleep")).await;
    let username = username_in(&message);
    wait_revoked_and_gone(&daemon, &username, || db.role_exists(&username)).await;
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_creation_stuck_on_a_global_read_lock_is_killed_and_leaves_nothing() {
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("lockmy");
    my.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        my.connection("my", "operation_timeout = \"1s\""),
        my_role(&role, "my", "1h", "2h", &[CREATE_USER])
    );
    let daemon = Daemon::start_with_mysql(None, &my, &body, &[]).await;
    let warm = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(warm.status, 200, "{:?}", warm.body);

    let mut locker = mysql_root().await;
    locker.query_drop("FLUSH TABLES WITH READ LOCK").await.unwrap();
    let stuck = daemon.client().creds(&role, None).await.unwrap();
    none_left_running("lessor's CREATE USER to be killed", || mysql_running(&my, "CREATE USER")).await;
    locker.query_drop("UNLOCK TABLES").await.unwrap();
    assert_eq!(stuck.status, 502, "{:?}", stuck.body);
    let message = stuck.body["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("cancelled on the server"), "{message}");
    let username = username_in(&message);

    wait_revoked_and_gone(&daemon, &username, || my.user_exists(&username)).await;
    let warm_user = warm.body["credential"]["username"].as_str().unwrap();
    assert_eq!(my.users_with_prefix(&prefix).await, [warm_user.to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_creation_that_sleeps_past_the_timeout_is_killed_and_rolled_back() {
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("slpmy");
    my.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        my.connection("my", "operation_timeout = \"1s\""),
        my_role(&role, "my", "1h", "2h", &[CREATE_USER, "DO SLEEP(60)"])
    );
    let daemon = Daemon::start_with_mysql(None, &my, &body, &[]).await;
    let started = std::time::Instant::now();
    let slow = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(slow.status, 502, "{:?}", slow.body);
    // Not a speed check: the statement sleeps a minute, the timeout is 1 s,
    // and half a minute is far above any scheduling delay.
    assert!(started.elapsed() < Duration::from_secs(30), "the answer waited for the sleep to end");
    none_left_running("lessor's SLEEP to be killed", || mysql_running(&my, "SLEEP")).await;
    let message = slow.body["error"]["message"].as_str().unwrap().to_string();
    let username = username_in(&message);
    wait_revoked_and_gone(&daemon, &username, || my.user_exists(&username)).await;
    assert!(my.users_with_prefix(&prefix).await.is_empty());
}

/// A crashed run's `pending` lease whose `issued_at` lies in the future (the
/// clock was stepped back since) is still rolled back at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_lease_from_the_future_is_rolled_back_at_start_up() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("clock");
    db.track_prefix(&prefix);
    let body = format!(
        "{}{SHORT_OPERATIONS}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let mut daemon = Daemon::start(&db, &body).await;
    daemon.stop();

    let username = format!("{prefix}fromthefuture");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    plant_pending(&daemon, &role, &username, future).await;
    // The crashed run had created the role when it died.
    db.su
        .batch_execute(&format!("CREATE ROLE \"{username}\" LOGIN PASSWORD 'pw-{}'", rand_suffix(16)))
        .await
        .unwrap();

    daemon.spawn().await;
    wait_revoked_and_gone(&daemon, &username, || db.role_exists(&username)).await;
}

/// A crashed run's last statement can still commit on the server after
/// the restarted daemon rolled its lease back (the server finishes what it
/// was sent after the client died): the rollback found nothing to drop,
/// yet the role appears just after. It is looked at once more an operation
/// timeout later, and dropped then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runs_creation_that_commits_after_the_rollback_is_dropped_on_the_second_look() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("latecommit");
    db.track_prefix(&prefix);
    // The second look comes an operation timeout after the first: long
    // enough for this test to make the role in between on a loaded machine.
    let body = format!(
        "{}operation_timeout = \"10s\"\n\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let mut daemon = Daemon::start(&db, &body).await;
    daemon.stop();
    let username = format!("{prefix}late");
    let id = plant_pending(&daemon, &role, &username, chrono::Utc::now()).await;

    daemon.spawn().await;
    // The first look dropped nothing: the role does not exist yet.
    wait_for("the rollback's first look", SETTLE, || async {
        daemon.log().lines().any(|l| l.contains(id.as_str()) && l.contains("once more")).then_some(())
    })
    .await;
    assert_eq!(lease_state_of(&daemon, &username).as_deref(), Some("revoking"), "{}", daemon.log());
    // The crashed run's CREATE ROLE commits now.
    db.su
        .batch_execute(&format!("CREATE ROLE \"{username}\" LOGIN PASSWORD 'pw-{}'", rand_suffix(16)))
        .await
        .unwrap();
    wait_revoked_and_gone(&daemon, &username, || db.role_exists(&username)).await;
}

/// Writes a `pending` lease of `role` for `username`, issued at
/// `issued_at`, into the stopped daemon's store, as a run that crashed
/// mid-issuance leaves it; its id.
async fn plant_pending(
    daemon: &Daemon,
    role: &str,
    username: &str,
    issued_at: chrono::DateTime<chrono::Utc>,
) -> lessor::lease::LeaseId {
    let lease = Lease {
        id: lessor::lease::new_id(role),
        role: role.to_string(),
        connection: "pg".into(),
        username: username.to_string(),
        state: LeaseState::Pending,
        issued_at,
        expires_at: issued_at + chrono::Duration::hours(1),
        max_expires_at: issued_at + chrono::Duration::hours(2),
        renewable: true,
        attempts: 0,
        last_error: None,
        owner: Owner { uid: 0, gid: 0, pid: None, policy: None, node: None, unit: None },
        plugin_data: None,
        revoked_at: None,
        idempotency: None,
    };
    let id = lease.id.clone();
    let store = SqliteStore::open(&daemon.dir.path().join("lessor.db")).unwrap();
    store.write(Write::Insert(lease)).await.unwrap();
    store.close().await.unwrap();
    id
}

/// An issuance that outlives `request_timeout`: the caller got a 503 and
/// holds nothing, so the credential is revoked as soon as it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_made_after_its_request_timed_out_is_revoked_at_once() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("late");
    db.track_prefix(&prefix);
    let body = format!(
        "request_timeout = \"1s\"\n\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE, "SELECT pg_sleep(2)"])
    );
    let daemon = Daemon::start(&db, &body).await;
    let late = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(late.status, 503, "{:?}", late.body);

    let path = daemon.dir.path().join("lessor.db");
    let leases = || {
        let conn =
            rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut select = conn.prepare("SELECT username, state FROM leases").unwrap();
        let rows =
            select.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>()
    };
    let username = wait_for("the undelivered credential to be revoked", SETTLE, || async {
        match leases().as_slice() {
            [(username, state)] if state == "revoked" => Some(username.clone()),
            _ => None,
        }
    })
    .await;
    assert_eq!(daemon.metric("lessor_undelivered_revoked_total").await, 1.0);
    assert_eq!(daemon.metric("lessor_leases_issued_total").await, 1.0, "the issuance did complete");
    assert!(!db.role_exists(&username).await, "the undelivered credential still exists");
    assert!(daemon.log().contains("revoking it"), "{}", daemon.log());
}

/// `force` drops leases whose backend refused, and a prefix reaches many
/// callers' leases: operators only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_and_prefix_are_refused_to_a_non_admin_who_may_still_revoke_its_own_lease() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("force");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("nobody", "user = \"nobody\"", &[&format!("creds:{role}")], "")
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let as_nobody = |args: &[&str]| {
        daemon.as_nobody(env!("CARGO_BIN_EXE_lessor")).args(args).output().expect("run lessor as nobody")
    };

    let out = as_nobody(&["creds", &role, "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lease_id = issued["lease_id"].as_str().unwrap();
    let username = issued["credential"]["username"].as_str().unwrap();

    for args in [vec!["--prefix", &format!("{role}/"), "--force"], vec!["--prefix", &format!("{role}/")]] {
        let out = as_nobody(&[&["lease", "revoke"][..], &args].concat());
        assert!(!out.status.success(), "revoke {args:?} succeeded as nobody");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("403") || stderr.contains("forbidden"), "{stderr}");
        assert!(stderr.contains("uid 65534 (nobody) may not revoke leases by prefix"), "{stderr}");
    }
    let lease = daemon.client().lease_get(lease_id).await.unwrap();
    assert_eq!(lease.body["state"], "active", "a refused force changed the lease");
    assert!(db.role_exists(username).await, "a refused force removed the role");

    let out = as_nobody(&["lease", "revoke", lease_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!db.role_exists(username).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_store_exits_naming_the_store() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("twice");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let other_socket = daemon.dir.path().join("second.sock");
    let second_config = daemon.dir.path().join("second.toml");
    std::fs::write(
        &second_config,
        config.replace(&format!("{:?}", daemon.socket), &format!("{other_socket:?}")),
    )
    .unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["serve", "--config"])
        .arg(&second_config)
        .env("LESSOR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the second daemon to exit", Duration::from_secs(20), || {
        let status = second.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let store = daemon.dir.path().join("lessor.db").display().to_string();
    assert!(stderr.contains(&store), "{stderr}");
    assert!(stderr.contains("only one daemon"), "{stderr}");
    assert!(!other_socket.exists(), "the refused daemon bound its socket");
    assert_eq!(daemon.client().health().await.unwrap().status, 200, "the first daemon was disturbed");
}

/// The pipelined PostgreSQL recipe drops the role only once its sessions
/// could be signalled: while `pg_terminate_backend` fails, the lease stays
/// unrevoked and the role (not logging in) stays findable by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_cannot_end_sessions_is_not_done_until_it_can() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("term");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    let session = db.login(&username, &password).await.expect("login as the issued role");

    // The admin connects to this database: there it may not signal anyone.
    let terminate = "FUNCTION pg_terminate_backend(integer, bigint)";
    db.su.batch_execute(&format!("REVOKE EXECUTE ON {terminate} FROM PUBLIC")).await.unwrap();
    let refused = daemon.client().revoke(&lease_id).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    let lease = daemon.client().lease_get(&lease_id).await.unwrap();
    assert_ne!(lease.body["state"], "revoked", "{:?}", lease.body);
    session.simple_query("SELECT 1").await.expect("the session was ended although the revocation failed");
    assert!(db.role_exists(&username).await, "the role was dropped with its session still running");
    assert!(db.login(&username, &password).await.is_err(), "the role still logs in");

    db.su.batch_execute(&format!("GRANT EXECUTE ON {terminate} TO PUBLIC")).await.unwrap();
    wait_for("the retried revocation", SETTLE, || async {
        let lease = daemon.client().lease_get(&lease_id).await.unwrap();
        (lease.body["state"] == "revoked").then_some(())
    })
    .await;
    assert!(session.simple_query("SELECT 1").await.is_err(), "the session outlived the revocation");
    assert!(!db.role_exists(&username).await);
}

/// MySQL: when the admin cannot read the user's hosts, revocation fails
/// and retries; it does not drop `'user'@'%'` and call the lease done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_revocation_that_cannot_read_the_hosts_retries() {
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("hosts");
    my.track_prefix(&prefix);
    let create = "CREATE USER '{{name}}'@'localhost' IDENTIFIED BY '{{password}}'";
    let body = format!("{}\n{}", my.connection("my", ""), my_role(&role, "my", "1h", "2h", &[create]));
    let daemon = Daemon::start_with_mysql(None, &my, &body, &[]).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();

    let mut su = mysql_root().await;
    su.query_drop(format!("REVOKE SELECT ON mysql.* FROM '{}'@'%'", my.admin)).await.unwrap();
    let refused = daemon.client().revoke(&lease_id).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    assert!(refused.body.to_string().contains("mysql.user"), "{:?}", refused.body);
    assert!(my.user_exists(&username).await);
    assert_ne!(daemon.client().lease_get(&lease_id).await.unwrap().body["state"], "revoked");

    su.query_drop(format!("GRANT SELECT ON mysql.* TO '{}'@'%'", my.admin)).await.unwrap();
    wait_for("the retried revocation", SETTLE, || async {
        let lease = daemon.client().lease_get(&lease_id).await.unwrap();
        (lease.body["state"] == "revoked").then_some(())
    })
    .await;
    assert!(!my.user_exists(&username).await);
}

#[test]
fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("lessor.sock");
    std::fs::write(&socket, "not a socket\n").unwrap();
    let config = dir.path().join("lessor.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = {socket:?}\nstore = \"sqlite://{}\"\n",
            dir.path().join("lessor.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket\n");
}

#[test]
fn config_check_bounds_every_duration_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bounds.toml");
    std::fs::write(
        &path,
        r#"
[server]
revoked_retention = "100000000d"
request_timeout = "0s"

[connections.aws]
plugin = "aws"
region = "us-east-1"
operation_timeout = "100000000d"

[roles.deploy]
connection = "aws"
credential_type = "assumed_role"
role_arn = "arn:aws:iam::123456789012:role/deployer"
default_ttl = "2h"
max_ttl = "1h"
"#,
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let file = path.display().to_string();
    for key in [
        "server.revoked_retention",
        "server.request_timeout",
        "connections.aws.operation_timeout",
        "roles.deploy.default_ttl",
    ] {
        assert!(stderr.contains(&format!("{file}: {key}: ")), "missing {key} in:\n{stderr}");
    }
}

/// The request log names the caller as the kernel and `/proc` say: uid and
/// user name, pid and executable, whoever the client claims to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_names_the_caller_from_its_credentials() {
    let db = TestDb::create().await;
    let body = pg_connection(&db, None);
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let out = daemon
        .as_nobody(env!("CARGO_BIN_EXE_lessor"))
        .arg("status")
        .env("USER", "root")
        .output()
        .expect("run lessor as nobody");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exe = format!("exe=\"{}\"", std::fs::canonicalize(env!("CARGO_BIN_EXE_lessor")).unwrap().display());
    let line = wait_for("the request's log line", Duration::from_secs(10), || async {
        daemon.log().lines().find(|l| l.contains("request") && l.contains("uid=65534")).map(str::to_string)
    })
    .await;
    assert!(line.contains("user=\"nobody\""), "{line}");
    assert!(line.contains(&exe), "{line}");
}
