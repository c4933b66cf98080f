//! Static accounts against the real servers: alternating users that both
//! work during the overlap, single in-place changes, emergency rotations
//! that end the old sessions, schedules, crash recovery mid-rotation, and
//! a store that never holds a plaintext password.

use std::process::Command;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::Value;

use crate::common::mysql::*;
use crate::common::*;

const SETTLE: Duration = Duration::from_secs(30);

/// A seal key in a folder of its own, kept for the test's life.
pub(crate) fn seal_key() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seal.key");
    lessor::seal::write_new_key(&path).unwrap();
    let text = path.display().to_string();
    (dir, text)
}

pub(crate) fn static_account(
    name: &str,
    connection: &str,
    strategy: &str,
    usernames: &[&str],
    extra: &str,
) -> String {
    let users: Vec<String> = usernames.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[static_accounts.{name}]\nconnection = \"{connection}\"\nstrategy = \"{strategy}\"\nusernames = [{}]\n{extra}\n",
        users.join(", ")
    )
}

/// The account's state once `static get` answers 200 with no rotation
/// under way and at least `version`.
pub(crate) async fn settled(daemon: &Daemon, name: &str, version: u64) -> Value {
    wait_for(&format!("static account {name} at version {version}"), SETTLE, || async {
        let r = daemon.client().static_get(name).await.unwrap();
        let done = r.status == 200 && r.body["rotation"]["in_progress"].is_null();
        (done && r.body["version"].as_u64() >= Some(version)).then_some(r.body)
    })
    .await
}

/// Whether the account's record no longer names a previous credential:
/// its retirement is recorded after the backend's change, and a rotation
/// asked for in between finds the account busy (409).
async fn retire_recorded(daemon: &Daemon, name: &str) -> bool {
    let r = daemon.client().static_get(name).await.unwrap();
    r.status == 200 && r.body["previous_username"].is_null()
}

/// A static account's `(username, password)` from `static get`'s answer.
pub(crate) fn credential(body: &Value) -> (String, String) {
    let c = &body["credential"];
    (c["username"].as_str().unwrap().to_string(), c["password"].as_str().unwrap().to_string())
}

fn lessor_cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(args)
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap()
}

/// Every byte of the store (database and write-ahead log) holds none of
/// `secrets`.
fn assert_store_holds_no(daemon: &Daemon, secrets: &[String]) {
    let mut bytes = Vec::new();
    for file in ["lessor.db", "lessor.db-wal"] {
        bytes.extend(std::fs::read(daemon.dir.path().join(file)).unwrap_or_default());
    }
    for secret in secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a plaintext password is in the store"
        );
    }
}

/// An alternating static account `name` over two fresh PostgreSQL users
/// (named `<tag>_<random>_a` and `_b`, dropped at the end): the config's
/// `seal_key_file`, connection and account (with `extra`), the seal key's
/// folder to keep, and the two users.
pub(crate) async fn pg_alternating(
    db: &TestDb,
    tag: &str,
    name: &str,
    extra: &str,
) -> (String, tempfile::TempDir, String, String) {
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("{tag}_{sfx}"));
    let (a, b) = (format!("{tag}_{sfx}_a"), format!("{tag}_{sfx}_b"));
    make_pg_users(db, &[&a, &b]).await;
    let (key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(db, None),
        static_account(name, "pg", "alternating", &[&a, &b], extra),
    );
    (body, key_dir, a, b)
}

pub(crate) async fn make_pg_users(db: &TestDb, users: &[&str]) {
    for user in users {
        db.su
            .batch_execute(&format!("CREATE ROLE \"{user}\" LOGIN PASSWORD 'initial-{}'", rand_suffix(16)))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_alternating_overlap_keeps_both_working_and_an_emergency_ends_the_old_sessions() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let (a, b) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account("billing", "pg", "alternating", &[&a, &b], "overlap = \"1h\"")
    );
    let daemon = Daemon::start(&db, &body).await;

    // The first rotation runs at start-up: the first user gets a password
    // only lessor knows.
    let v1 = settled(&daemon, "billing", 1).await;
    assert_eq!(v1["version"], 1);
    let (user1, pw1) = credential(&v1);
    assert_eq!(user1, a);
    let held = db.login(&user1, &pw1).await.expect("the first credential logs in");

    // An operator rotation with an overlap: the other user becomes current,
    // and both log in until the overlap ends.
    let out = lessor_cli(&daemon, &["rotate", "billing", "--reason", "quarterly", "--overlap", "3s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("version 2") && said.contains(&a) && said.contains("keeps working until"),
        "{said}"
    );
    let v2 = settled(&daemon, "billing", 2).await;
    let (user2, pw2) = credential(&v2);
    assert_eq!(user2, b);
    assert_eq!(v2["previous_username"], a.as_str());
    db.login(&user2, &pw2).await.expect("the new credential logs in");
    db.login(&user1, &pw1).await.expect("the previous credential still logs in during the overlap");
    wait_for("the previous credential to be retired", SETTLE, || async {
        (db.login(&user1, &pw1).await.is_err() && retire_recorded(&daemon, "billing").await).then_some(())
    })
    .await;
    held.simple_query("SELECT 1").await.expect("a session of the previous user survives an overlap");
    db.login(&user2, &pw2).await.expect("the current credential still logs in");

    // An emergency (no overlap) needs a reason, and ends the old sessions.
    let refused = daemon.client().static_rotate("billing", None, Some("0s")).await.unwrap();
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    let old_session = db.login(&user2, &pw2).await.unwrap();
    // Asked again while the account is still busy finishing the last
    // retirement (409, which changes nothing).
    let out = wait_for("the account free to rotate", SETTLE, || async {
        let out = lessor_cli(&daemon, &["rotate", "billing", "--reason", "laptop stolen", "--overlap", "0s"]);
        (!String::from_utf8_lossy(&out.stderr).contains("in progress")).then_some(out)
    })
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v3 = settled(&daemon, "billing", 3).await;
    let (user3, pw3) = credential(&v3);
    assert_eq!(user3, a);
    assert!(v3["previous_valid_until"].is_null(), "{v3}");
    db.login(&user3, &pw3).await.expect("the emergency credential logs in");
    assert!(db.login(&user2, &pw2).await.is_err(), "the leaked credential still logs in");
    wait_for("the leaked credential's session to end", SETTLE, || async {
        old_session.simple_query("SELECT 1").await.is_err().then_some(())
    })
    .await;
    assert!(daemon.log().contains("laptop stolen"), "the reason is not in the log");
    let key_material = std::fs::read_to_string(&key).unwrap().trim().to_string();
    assert_store_holds_no(&daemon, &[pw1, pw2, pw3, key_material.clone()]);
    assert!(!daemon.log().contains(&key_material), "the seal key is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_single_changes_the_password_in_place() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let user = format!("st_{sfx}_s");
    let initial = format!("initial-{}", rand_suffix(16));
    db.su.batch_execute(&format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{initial}'")).await.unwrap();
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account("reports", "pg", "single", &[&user], "overlap = \"0s\"")
    );
    let daemon = Daemon::start(&db, &body).await;
    let v1 = settled(&daemon, "reports", 1).await;
    let (_, pw1) = credential(&v1);
    assert!(db.login(&user, &initial).await.is_err(), "the password from before lessor still works");
    db.login(&user, &pw1).await.expect("login with version 1");
    let rotated = daemon.client().static_rotate("reports", None, None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    assert!(rotated.body["credential"]["password"].is_null(), "rotate answered the password");
    let v2 = settled(&daemon, "reports", 2).await;
    let (_, pw2) = credential(&v2);
    db.login(&user, &pw2).await.expect("login with version 2");
    assert!(db.login(&user, &pw1).await.is_err(), "single kept the old password working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_while_one_runs_is_refused_with_409() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let (a, b) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account("billing", "pg", "alternating", &[&a, &b], "overlap = \"1h\"")
    );
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;

    // ALTER ROLE waits while pg_authid is locked in SHARE mode.
    let locker = connect(&pg_url()).await;
    locker.batch_execute("BEGIN; LOCK TABLE pg_authid IN SHARE MODE").await.unwrap();
    let first = tokio::spawn({
        let client = daemon.client();
        async move { client.static_rotate("billing", Some("first"), None).await.unwrap() }
    });
    wait_for("the first rotation to start", SETTLE, || async {
        let r = daemon.client().static_get("billing").await.unwrap();
        (r.body["rotation"]["in_progress"] == "created").then_some(())
    })
    .await;
    let second = daemon.client().static_rotate("billing", Some("second"), None).await.unwrap();
    assert_eq!(second.status, 409, "{:?}", second.body);
    locker.batch_execute("COMMIT").await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["version"], 2);
    let (user, password) = credential(&settled(&daemon, "billing", 2).await);
    db.login(&user, &password).await.expect("the rotated credential logs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_alternating_and_single() {
    let my = MyDb::create().await;
    let sfx = rand_suffix(6);
    my.track_prefix(&format!("st_{sfx}"));
    let (a, b, s) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"), format!("st_{sfx}_s"));
    let mut su = mysql_root().await;
    for user in [&a, &b, &s] {
        my.create_user(user).await;
        su.query_drop(format!("GRANT SELECT ON `{}`.* TO '{user}'@'%'", my.database)).await.unwrap();
    }
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}",
        my.connection("my", ""),
        static_account("shop", "my", "alternating", &[&a, &b], "overlap = \"1h\""),
        static_account("legacy", "my", "single", &[&s], "overlap = \"0s\""),
    );
    let daemon = Daemon::start_with_mysql(None, &my, &body, &[]).await;
    let v1 = settled(&daemon, "shop", 1).await;
    let (user1, pw1) = credential(&v1);
    let mut held = my.login(&user1, &pw1).await.expect("the first credential logs in");

    let rotated = daemon.client().static_rotate("shop", Some("quarterly"), Some("2s")).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let (user2, pw2) = credential(&settled(&daemon, "shop", 2).await);
    assert_ne!(user1, user2);
    my.login(&user2, &pw2).await.expect("the new credential logs in");
    my.login(&user1, &pw1).await.expect("the previous credential works during the overlap");
    wait_for("the previous credential to be retired", SETTLE, || async {
        (my.login(&user1, &pw1).await.is_err() && retire_recorded(&daemon, "shop").await).then_some(())
    })
    .await;
    held.query_drop("SELECT 1").await.expect("a session of the previous user survives an overlap");

    let mut old = my.login(&user2, &pw2).await.unwrap();
    let rotated = wait_for("the account free to rotate", SETTLE, || async {
        let r = daemon.client().static_rotate("shop", Some("leak"), Some("0s")).await.unwrap();
        (r.status != 409).then_some(r)
    })
    .await;
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let (user3, pw3) = credential(&settled(&daemon, "shop", 3).await);
    my.login(&user3, &pw3).await.expect("the emergency credential logs in");
    assert!(my.login(&user2, &pw2).await.is_err());
    assert!(old.query_drop("SELECT 1").await.is_err(), "the leaked credential's session survived");

    let (_, spw1) = credential(&settled(&daemon, "legacy", 1).await);
    my.login(&s, &spw1).await.expect("single: version 1 logs in");
    assert_eq!(daemon.client().static_rotate("legacy", None, None).await.unwrap().status, 200);
    let (_, spw2) = credential(&settled(&daemon, "legacy", 2).await);
    my.login(&s, &spw2).await.expect("single: version 2 logs in");
    assert!(my.login(&s, &spw1).await.is_err(), "single: version 1 still logs in");
    assert_store_holds_no(&daemon, &[pw1, pw2, pw3, spw1, spw2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_rotates_on_time_and_a_period_does_not_run_twice_after_a_restart() {
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let users = [format!("st_{sfx}_a"), format!("st_{sfx}_b"), format!("st_{sfx}_p")];
    make_pg_users(&db, &[&users[0], &users[1], &users[2]]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}",
        pg_connection(&db, None),
        static_account(
            "often",
            "pg",
            "alternating",
            &[&users[0], &users[1]],
            "schedule = \"*/2 * * * * *\"\noverlap = \"1s\""
        ),
        static_account("daily", "pg", "single", &[&users[2]], "rotation_period = \"1h\"\noverlap = \"0s\""),
    );
    let original = db.stored_password(&users[2]).await;
    let mut daemon = Daemon::start(&db, &body).await;
    let v3 = settled(&daemon, "often", 3).await;
    let rotated_at: chrono::DateTime<chrono::Utc> = v3["rotated_at"].as_str().unwrap().parse().unwrap();
    let next: chrono::DateTime<chrono::Utc> = v3["next_rotation_at"].as_str().unwrap().parse().unwrap();
    assert!(next > rotated_at && next - rotated_at <= chrono::Duration::seconds(2), "{v3}");
    let (user, password) = credential(&v3);
    db.login(&user, &password).await.expect("the scheduled credential logs in");

    let daily = settled(&daemon, "daily", 1).await;
    let next: chrono::DateTime<chrono::Utc> = daily["next_rotation_at"].as_str().unwrap().parse().unwrap();
    assert!(next - chrono::Utc::now() > chrono::Duration::minutes(59), "{daily}");
    // Version 1 is one change of the password on the server.
    let (_, daily_password) = credential(&daily);
    let v1 = db.stored_password(&users[2]).await;
    assert_ne!(v1, original, "version 1 left the server's verifier as it was");
    db.login(&users[2], &daily_password).await.expect("version 1 logs in");
    daemon.stop();
    daemon.spawn().await;
    // Watched for a second after start-up, on the server as well as in
    // lessor's answer: the period has not passed, so nothing runs.
    for _ in 0..10 {
        let again = daemon.client().static_get("daily").await.unwrap();
        assert_eq!(again.body["version"], 1, "{:?}", again.body);
        assert_eq!(
            db.stored_password(&users[2]).await,
            v1,
            "the password changed on the server after a restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.login(&users[2], &daily_password).await.expect("version 1 still logs in after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_back_to_back_rotations_always_leaves_a_working_credential() {
    use rand::Rng;
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let (a, b) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        pg_connection(&db, None),
        static_account(
            "busy",
            "pg",
            "alternating",
            &[&a, &b],
            "schedule = \"* * * * * *\"\noverlap = \"0s\""
        )
    );
    let mut daemon = Daemon::start(&db, &body).await;
    let mut seen = Vec::new();
    for round in 0..10 {
        let wait = rand::rng().random_range(50..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill9();
        daemon.spawn().await;
        // The stored credential logs in; if a rotation lands between the
        // read and the login, read again.
        let mut tries = 0;
        loop {
            let state = settled(&daemon, "busy", 1).await;
            let (user, password) = credential(&state);
            if db.login(&user, &password).await.is_ok() {
                seen.push(password);
                break;
            }
            let now = daemon.client().static_get("busy").await.unwrap();
            tries += 1;
            assert!(
                now.body["version"] != state["version"] && tries < 20,
                "round {round}: version {} does not log in:\n{}",
                state["version"],
                daemon.log()
            );
        }
    }
    let last = settled(&daemon, "busy", 1).await;
    assert!(last["version"].as_u64().unwrap() >= 5, "rotations did not run back to back: {last}");
    assert_store_holds_no(&daemon, &seen);
}

/// `lessor watch` as an ordinary user: a snapshot of what it may read, the
/// `rotated` event within a second of the promotion, its own lease's
/// `lease_expiring` and `lease_revoked`, and nothing about root's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_rotations_and_only_the_callers_own_lease_events() {
    use std::io::BufRead;
    let db = TestDb::create().await;
    let sfx = rand_suffix(6);
    db.track_prefix(&format!("st_{sfx}"));
    let (a, b) = (format!("st_{sfx}_a"), format!("st_{sfx}_b"));
    make_pg_users(&db, &[&a, &b]).await;
    let (role, prefix) = unique_role("watch");
    db.track_prefix(&prefix);
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "3s", "1h", &[CREATE_ROLE]),
        static_account("billing", "pg", "alternating", &[&a, &b], "overlap = \"1h\""),
        policy("nobody", "uid = 65534", &[&format!("creds:{role}"), "static:billing"], "")
    );
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;
    daemon.open_to_all_users();
    let as_nobody = |args: &[&str]| {
        let mut command = daemon.as_nobody(env!("CARGO_BIN_EXE_lessor"));
        command.args(args);
        command
    };

    let theirs = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(theirs.status, 200, "{:?}", theirs.body);
    let theirs = theirs.body["lease_id"].as_str().unwrap().to_string();
    let out = as_nobody(&["creds", &role, "--format", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine = mine["lease_id"].as_str().unwrap().to_string();

    let mut watcher = as_nobody(&["watch"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (lines, mut events) =
        tokio::sync::mpsc::unbounded_channel::<(chrono::DateTime<chrono::Utc>, Value)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event: Value = serde_json::from_str(&line).expect("each line is JSON");
            if lines.send((chrono::Utc::now(), event)).is_err() {
                break;
            }
        }
    });
    let (_, snapshot) = next_event(&mut events).await;
    assert_eq!(snapshot["event"], "snapshot", "{snapshot}");
    let listed: Vec<&str> =
        snapshot["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [mine.as_str()], "{snapshot}");
    assert_eq!(snapshot["static"][0]["version"], 1, "{snapshot}");
    assert!(snapshot["static"][0]["credential"]["password"].is_null(), "a password in the stream");

    let rotated = daemon.client().static_rotate("billing", Some("watch test"), None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let rotated_at: chrono::DateTime<chrono::Utc> =
        rotated.body["rotated_at"].as_str().unwrap().parse().unwrap();
    let (mut saw_rotated, mut saw_expiring, mut saw_revoked) = (false, false, false);
    while !(saw_rotated && saw_expiring && saw_revoked) {
        let (at, event) = next_event(&mut events).await;
        assert!(!event.to_string().contains(&theirs), "root's lease reached nobody's stream: {event}");
        assert!(event.get("password").is_none() && !event.to_string().contains("\"password\""), "{event}");
        match event["event"].as_str() {
            Some("rotated") => {
                assert_eq!(
                    (event["account"].as_str(), event["version"].as_u64()),
                    (Some("billing"), Some(2))
                );
                assert!(
                    at - rotated_at < chrono::Duration::seconds(1),
                    "rotated arrived {} late",
                    at - rotated_at
                );
                saw_rotated = true;
            }
            Some("lease_expiring") => {
                assert_eq!(event["lease"]["lease_id"], mine.as_str());
                saw_expiring = true;
            }
            Some("lease_revoked") => {
                assert_eq!(event["lease"]["lease_id"], mine.as_str());
                assert_eq!(event["lease"]["state"], "revoked");
                assert!(saw_expiring, "revoked before expiring");
                saw_revoked = true;
            }
            _ => {}
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
}

type Events = tokio::sync::mpsc::UnboundedReceiver<(chrono::DateTime<chrono::Utc>, Value)>;

/// The next line of a watch stream, with when it arrived.
async fn next_event(events: &mut Events) -> (chrono::DateTime<chrono::Utc>, Value) {
    tokio::time::timeout(SETTLE, events.recv()).await.expect("an event in time").expect("the stream goes on")
}

/// `rotate-root` on PostgreSQL and MariaDB: the admin password lessor was
/// configured with stops working, lessor keeps issuing with the new one,
/// and after a restart (the config still names the old one) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_replaces_the_admin_password_and_survives_a_restart() {
    let db = TestDb::create().await;
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("root");
    let (my_role_name, my_prefix) = unique_role("mroot");
    db.track_prefix(&prefix);
    my.track_prefix(&my_prefix);
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        my.connection("my", ""),
        my_role(&my_role_name, "my", "1h", "2h", &[CREATE_USER]),
    );
    let mut daemon = Daemon::start_with_mysql(Some(&db), &my, &body, &[]).await;
    assert!(db.login(&db.admin, &db.admin_password).await.is_ok());

    for connection in ["pg", "my"] {
        let out = lessor_cli(&daemon, &["rotate-root", connection]);
        assert!(out.status.success(), "{connection}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("version 1"));
    }
    assert!(
        db.login(&db.admin, &db.admin_password).await.is_err(),
        "the old PostgreSQL admin password works"
    );
    assert!(my.login(&my.admin, &my.admin_password).await.is_err(), "the old MySQL admin password works");
    // Nobody reads it back: it is no static account.
    let hidden = daemon.client().static_get("connection:pg").await.unwrap();
    assert_eq!(hidden.status, 404, "{:?}", hidden.body);

    let issue_and_log_in = |daemon: &Daemon| {
        let client = daemon.client();
        let (role, my_role_name) = (role.clone(), my_role_name.clone());
        async move {
            let pg = client.creds(&role, None).await.unwrap();
            assert_eq!(pg.status, 200, "{:?}", pg.body);
            let my_issued = client.creds(&my_role_name, None).await.unwrap();
            assert_eq!(my_issued.status, 200, "{:?}", my_issued.body);
            (credential(&pg.body), credential(&my_issued.body))
        }
    };
    let ((pg_user, pg_pw), _) = issue_and_log_in(&daemon).await;
    db.login(&pg_user, &pg_pw).await.expect("issued after rotate-root");

    daemon.stop();
    daemon.spawn().await;
    let ((pg_user, pg_pw), (my_user, _)) = issue_and_log_in(&daemon).await;
    db.login(&pg_user, &pg_pw).await.expect("issued after a restart");
    assert!(my.user_exists(&my_user).await);
    assert!(daemon.log().contains("using the rotated admin password from the store"), "{}", daemon.log());
}

/// `access_key` on moto with authentication on: after a rotation the IAM
/// user has the new key and it works, the old one works during the overlap
/// and is deleted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_key_rotation_on_moto_hands_over_then_deletes_the_old_key() {
    use crate::common::aws::*;
    let moto = Moto::start().await;
    let root = iam(&moto.endpoint, ANY_KEY).await;
    let (admin_id, admin_secret) = make_admin(&root, "lessor-admin").await;
    let user = format!("svc-{}", rand_suffix(6));
    root.create_user().user_name(&user).send().await.unwrap();
    moto.enable_auth().await;
    let admin = iam(&moto.endpoint, (&admin_id, &admin_secret)).await;
    let keys_of = |user: String| {
        let admin = admin.clone();
        async move {
            let listed = admin.list_access_keys().user_name(user).send().await.unwrap();
            listed
                .access_key_metadata()
                .iter()
                .map(|k| k.access_key_id().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        aws_connection(&moto.endpoint, &admin_id),
        static_account("deploy", "aws", "access_key", &[&user], "overlap = \"2s\"")
    );
    let daemon = Daemon::start_aws(&admin_secret, &body, &[]).await;
    let aws_key = |body: &Value| {
        let c = &body["credential"];
        (
            c["access_key_id"].as_str().unwrap().to_string(),
            c["secret_access_key"].as_str().unwrap().to_string(),
        )
    };

    let (id1, secret1) = aws_key(&settled(&daemon, "deploy", 1).await);
    let arn = caller_identity(&moto.endpoint, (&id1, &secret1), None).await.expect("the first key works");
    assert!(arn.ends_with(&format!("user/{user}")), "{arn}");
    assert_eq!(keys_of(user.clone()).await, std::slice::from_ref(&id1));

    let rotated = daemon.client().static_rotate("deploy", Some("quarterly"), None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    assert!(rotated.body["credential"]["secret_access_key"].is_null(), "rotate answered the secret");
    let (id2, secret2) = aws_key(&settled(&daemon, "deploy", 2).await);
    assert_ne!(id1, id2);
    caller_identity(&moto.endpoint, (&id2, &secret2), None).await.expect("the new key works");
    caller_identity(&moto.endpoint, (&id1, &secret1), None)
        .await
        .expect("the old key works during the overlap");
    wait_for("the old key to be deleted", SETTLE, || async {
        let keys = keys_of(user.clone()).await;
        (keys == [id2.clone()]).then_some(())
    })
    .await;
    assert!(
        caller_identity(&moto.endpoint, (&id1, &secret1), None).await.is_err(),
        "the deleted key still works"
    );
    assert_store_holds_no(&daemon, &[secret1, secret2]);
}

/// `rotate-root` on the AWS plugin: lessor's own access key is replaced,
/// the old one is deleted and refused, and lessor keeps making IAM users
/// with the new one, after a restart too (its password file still holds
/// the old secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_on_aws_replaces_lessors_own_access_key() {
    use crate::common::aws::*;
    let moto = Moto::start().await;
    let root = iam(&moto.endpoint, ANY_KEY).await;
    let (admin_id, admin_secret) = make_admin(&root, "lessor-admin").await;
    moto.enable_auth().await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n[roles.batch]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\n\
         user_path = \"/lessor/root/\"\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n",
        aws_connection(&moto.endpoint, &admin_id),
    );
    let mut daemon = Daemon::start_aws(&admin_secret, &body, &[]).await;
    let issue = |daemon: &Daemon| {
        let client = daemon.client();
        async move {
            let issued = client.creds("batch", None).await.unwrap();
            assert_eq!(issued.status, 200, "{:?}", issued.body);
        }
    };
    issue(&daemon).await;

    let rotated = daemon.client().rotate_root("aws").await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    assert_eq!(rotated.body["version"], 1);
    let refused = caller_identity(&moto.endpoint, (&admin_id, &admin_secret), None).await;
    assert!(refused.is_err(), "lessor's old key still works");
    // moto refuses unknown keys: lessor's next call proves the new key.
    issue(&daemon).await;

    daemon.stop();
    daemon.spawn().await;
    issue(&daemon).await;
    assert!(daemon.log().contains("using the rotated admin password from the store"), "{}", daemon.log());
    assert!(!daemon.log().contains(&admin_secret), "the old secret is in the log");
}
