//! The consumer side against the real servers: pools that move to fresh
//! users through the credential keeper without a failed query
//! (`examples/pool_service.rs`, PostgreSQL with password authentication,
//! MariaDB), a static account rotated under a pool, a daemon restarted
//! under one, `lessor exec`, and `creds --output --watch`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lessor_client::keeper::{Keeper, Options, Source};
use lessor_client::pool::{MysqlManager, MysqlPool};
use mysql_async::prelude::Queryable;

use crate::common::mysql::*;
use crate::common::*;
use crate::rotation::{pg_alternating, settled};

#[path = "../../examples/pool_service.rs"]
#[allow(dead_code)]
mod pool_service;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn database(db: &TestDb) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host(&db.host).port(db.port).dbname(&db.database).connect_timeout(Duration::from_secs(5));
    config
}

/// Keeper options for short leases: the replaced lease is revoked 2 s
/// after its replacement is published.
fn quick() -> Options {
    Options { drain: Duration::from_secs(2), max_backoff: Duration::from_secs(1) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_moves_through_fresh_postgres_users_without_a_failed_query() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("pool");
    db.track_prefix(&prefix);
    // TTLs that leave a renewal seconds of slack even on a loaded machine
    // (the credential's VALID UNTIL is the lease's expiry), and a run long
    // enough for three users at least.
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "12s", "24s", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;

    let source = Source::Role { role: role.clone(), ttl: None };
    let report =
        pool_service::run(daemon.client(), source, quick(), database(&db), 4, 4, Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(report.failed, 0, "failed queries: {:?}", report.errors);
    assert!(report.queries > 1000, "{report:?}");
    assert!(report.users.len() >= 3, "only {} users in 60 s: {:?}", report.users.len(), report.users);
    // The keeper revoked what it held at shutdown, and every replaced lease
    // went before: no role of any of them is left.
    wait_for("every role of the run to be gone", Duration::from_secs(15), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_moves_through_fresh_mariadb_users_without_a_failed_query() {
    let db = MyDb::create().await;
    let (role, prefix) = unique_role("mpool");
    db.track_prefix(&prefix);
    let grant = format!("GRANT SELECT ON `{}`.items TO '{{{{name}}}}'@'%'", db.database);
    let body = format!(
        "{}\n{}",
        db.connection("my", ""),
        my_role(&role, "my", "12s", "24s", &[CREATE_USER, &grant])
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;

    let keeper = Keeper::start(daemon.client(), Source::Role { role: role.clone(), ttl: None }, quick())
        .await
        .unwrap();
    let opts = root_opts_at(&mysql_url()).db_name(Some(db.database.clone()));
    let pool =
        MysqlPool::builder(MysqlManager::new(opts.into(), keeper.subscribe())).max_size(4).build().unwrap();
    let (queries, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let users = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    // As for PostgreSQL: leases with seconds of slack for a renewal on a
    // loaded machine, over a run long enough for three users at least.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (pool, queries, failed, users) =
                (pool.clone(), queries.clone(), failed.clone(), users.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let outcome = async {
                        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                        let user: Option<String> =
                            conn.query_first("SELECT CURRENT_USER()").await.map_err(|e| e.to_string())?;
                        let _: Option<i32> =
                            conn.query_first("SELECT n FROM items").await.map_err(|e| e.to_string())?;
                        Ok::<_, String>(user.unwrap_or_default())
                    }
                    .await;
                    queries.fetch_add(1, Ordering::Relaxed);
                    match outcome {
                        Ok(user) => {
                            users
                                .lock()
                                .unwrap()
                                .insert(user.split('@').next().unwrap_or_default().to_string());
                        }
                        Err(e) => {
                            eprintln!("failed query: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    pool.close();
    keeper.shutdown().await;
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(queries.load(Ordering::Relaxed) > 1000);
    let users = users.lock().unwrap().clone();
    assert!(users.len() >= 3, "only {} users in 60 s: {users:?}", users.len());
    wait_for("every user of the run to be gone", Duration::from_secs(15), || async {
        db.users_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_a_static_account_follows_two_rotations_without_a_failed_query() {
    let db = TestDb::create().await;
    let (body, _key_dir, a, b) = pg_alternating(&db, "pst", "billing", "overlap = \"5s\"").await;
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;

    let client = daemon.client();
    let run = tokio::spawn(pool_service::run(
        client.clone(),
        Source::Static { name: "billing".into() },
        quick(),
        database(&db),
        4,
        4,
        Duration::from_secs(20),
    ));
    for version in [2, 3] {
        // Rotate once the pool works as the current user (its sessions are
        // on the server), so each rotation moves a pool in use.
        let current = client.static_account("billing").await.unwrap().credential.username.unwrap();
        wait_for("the pool to work as the current user", Duration::from_secs(30), || async {
            (sessions_of(&db, &current).await > 0).then_some(())
        })
        .await;
        let r = client.static_rotate("billing", Some("test"), None).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        settled(&daemon, "billing", version).await;
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "failed queries: {:?}", report.errors);
    assert_eq!(report.users, [a.clone(), b.clone()].into_iter().collect(), "{report:?}");

    // Afterwards a pool on the account holds only the current user's connections.
    let current = daemon.client().static_account("billing").await.unwrap();
    let current = current.credential.username.unwrap();
    let keeper =
        Keeper::start(daemon.client(), Source::Static { name: "billing".into() }, quick()).await.unwrap();
    let pool = lessor_client::pool::PgPool::builder(lessor_client::pool::PgManager::new(
        database(&db),
        tokio_postgres::NoTls,
        keeper.subscribe(),
    ))
    .max_size(4)
    .build()
    .unwrap();
    let conns = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    for conn in conns {
        let conn = conn.unwrap();
        assert_eq!(conn.username, current);
        let user: String = conn.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(user, current);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keeper_reconnects_when_the_daemon_restarts_and_the_pool_keeps_working() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("prestart");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "10s", "20s", &[CREATE_ROLE]));
    let mut daemon = Daemon::start(&db, &body).await;

    let source = Source::Role { role: role.clone(), ttl: None };
    let run = tokio::spawn(pool_service::run(
        daemon.client(),
        source,
        quick(),
        database(&db),
        4,
        4,
        Duration::from_secs(75),
    ));
    // The pool has moved to a second user before the restart.
    wait_for("the pool to move to a second user", Duration::from_secs(60), || async {
        (db.roles_with_prefix(&prefix).await.len() >= 2).then_some(())
    })
    .await;
    let before = db.roles_with_prefix(&prefix).await;
    daemon.stop();
    // Down for real: the socket refuses, so the keeper must reconnect.
    let down = daemon.client();
    wait_for("the daemon to be down", Duration::from_secs(30), || async {
        down.health().await.is_err().then_some(())
    })
    .await;
    daemon.spawn().await;
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "failed queries: {:?}", report.errors);
    let after: Vec<_> = report.users.iter().filter(|u| !before.contains(*u)).collect();
    assert!(after.len() >= 2, "no new users after the restart: {report:?} (before: {before:?})");
    wait_for("every role of the run to be gone", Duration::from_secs(15), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
}

/// Waits for `path` to hold text that `check` accepts.
async fn file_with(path: &std::path::Path, what: &str, check: impl Fn(&str) -> bool) -> String {
    wait_for(what, Duration::from_secs(20), || async {
        std::fs::read_to_string(path).ok().filter(|t| check(t))
    })
    .await
}

fn env_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessor_exec_passes_the_credential_signals_or_restarts_on_rotation_and_exits_with_the_childs_status()
{
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("exec");
    db.track_prefix(&prefix);
    let (statics, _key_dir, _, _) = pg_alternating(&db, "xst", "billing", "overlap = \"1h\"").await;
    let body = format!("{statics}\n{}", pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let lessor = |args: &[&str]| {
        let mut command = Command::new(LESSOR);
        command.args(args).env("LESSOR_SOCKET", &daemon.socket).stdin(Stdio::null());
        command
    };

    // The child sees the variables; its status is lessor's; the lease goes.
    let seen = dir.path().join("seen.env");
    let script = format!("env > {}; exit 3", seen.display());
    let out =
        lessor(&["exec", "--role", &role, "--env", "APP_DSN=user={{username}}", "--", "sh", "-c", &script])
            .output()
            .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let env = std::fs::read_to_string(&seen).unwrap();
    let (user, password) = (env_value(&env, "PGUSER").unwrap(), env_value(&env, "PGPASSWORD").unwrap());
    assert_eq!(env_value(&env, "APP_DSN"), Some(format!("user={user}").as_str()));
    assert!(env_value(&env, "LESSOR_LEASE_ID").unwrap().starts_with(&format!("{role}/")));
    assert!(env_value(&env, "MYSQL_PWD").is_none(), "a PostgreSQL credential sets no MySQL variables");
    assert!(user.starts_with(&prefix));
    assert!(!password.is_empty());
    assert!(!db.role_exists(user).await, "the lease outlived the command");

    // --on-change signal: a rotation of the static account sends SIGHUP.
    let log = dir.path().join("hup.log");
    let script = format!(
        "trap 'echo hup >> {log}' HUP; echo \"start $PGUSER\" >> {log}; while :; do sleep 0.1; done",
        log = log.display()
    );
    let mut child = lessor(&["exec", "--static", "billing", "--", "sh", "-c", &script]).spawn().unwrap();
    let first = file_with(&log, "the child to start", |t| t.starts_with("start ")).await;
    let rotated = daemon.client().static_rotate("billing", Some("test"), None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    file_with(&log, "SIGHUP after the rotation", |t| t.contains("hup")).await;
    // SIGTERM is forwarded, and lessor exits with the child's status.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}; log: {first}");

    // --on-change restart: the child runs again with the new user.
    let log = dir.path().join("restart.log");
    let script = format!("echo \"$PGUSER\" >> {}; while :; do sleep 0.1; done", log.display());
    let mut child =
        lessor(&["exec", "--static", "billing", "--on-change", "restart", "--", "sh", "-c", &script])
            .spawn()
            .unwrap();
    let first = file_with(&log, "the child to start", |t| t.lines().count() == 1).await;
    let rotated = daemon.client().static_rotate("billing", Some("test"), None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let both = file_with(&log, "the restarted child", |t| t.lines().count() == 2).await;
    let users: Vec<&str> = both.lines().collect();
    assert_ne!(users[0], users[1], "restarted with the same user: {first}");
    let current = daemon.client().static_account("billing").await.unwrap().credential.username.unwrap();
    assert_eq!(users[1], current);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_output_watch_replaces_the_file_atomically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("cfile");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "3s", "6s", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.env");

    let mut writer = Command::new(LESSOR)
        .args(["creds", &role, "--format", "env", "--output"])
        .arg(&file)
        .arg("--watch")
        .env("LESSOR_SOCKET", &daemon.socket)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // A reader polling in a loop never sees a partial file.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                let Ok(text) = std::fs::read_to_string(&file) else { continue };
                reads += 1;
                let whole = text.ends_with('\n')
                    && ["export LESSOR_LEASE_ID=", "export PGUSER=", "export PGPASSWORD="]
                        .iter()
                        .all(|k| text.lines().any(|l| l.starts_with(k)));
                assert!(whole, "a partial file was read: {} bytes", text.len());
                seen.insert(text.lines().find(|l| l.starts_with("export PGUSER=")).unwrap().to_string());
            }
            (reads, seen)
        })
    };
    let first = file_with(&file, "the first credential", |t| t.contains("PGUSER")).await;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let user = |t: &str| t.lines().find(|l| l.starts_with("export PGUSER=")).unwrap().to_string();
    let second =
        file_with(&file, "a replaced credential", |t| t.contains("PGUSER") && user(t) != user(&first)).await;
    let name = user(&second).trim_start_matches("export PGUSER=").trim_matches('\'').to_string();
    let password = second
        .lines()
        .find_map(|l| l.strip_prefix("export PGPASSWORD="))
        .unwrap()
        .trim_matches('\'')
        .to_string();
    db.login(&name, &password).await.expect("the rewritten credential logs in");
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader.join().unwrap();
    assert!(reads > 100 && seen.len() >= 2, "{reads} reads, {seen:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    unsafe { libc::kill(writer.id() as i32, libc::SIGTERM) };
    assert!(writer.wait().unwrap().success());
    wait_for("the watched lease to be revoked", Duration::from_secs(10), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
}

/// Sessions open on the PostgreSQL test cluster as `user`.
async fn sessions_of(db: &TestDb, user: &str) -> i64 {
    db.su
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}
