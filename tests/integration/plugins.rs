//! External plugins through the daemon, and the conformance kit.
//!
//! The PostgreSQL plugin runs out of process (`lessor plugin serve
//! postgres`, and `lessor-fixture-plugin`, the same plugin with faults the
//! test switches on) against the test cluster, whose roles are checked
//! directly: the conformance kit (`lessor plugin test`) passes for the
//! built-in plugins in and out of process, for MySQL, AWS (moto) and the
//! Python RabbitMQ plugin; an executable whose digest differs from the pin
//! is refused, at start and at a restart; kill -9 of the plugin under load
//! gives 503s, then no orphan and every lease expiring; a plugin hanging in
//! `create` has the call cancelled and the lease rolled back once it
//! answers again; a plugin printing a password at debug does not get it
//! into lessor's log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::moto::{iam, make_admin, Moto};
use crate::common::mysql::{my_role, MyDb, CREATE_USER};
use crate::common::rabbitmq::Rabbitmq;
use crate::common::*;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");
/// Far above anything normal, for a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(90);

fn lessor(args: &[&str]) -> Output {
    Command::new(LESSOR).args(args).env_remove("LESSOR_SOCKET").output().expect("run lessor")
}

/// The fixture plugin, built with the workspace next to `lessor`.
fn fixture() -> PathBuf {
    let path = Path::new(LESSOR).with_file_name("lessor-fixture-plugin");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p lessor-fixture-plugin`",
        path.display()
    );
    path
}

/// `[plugins.NAME]` running `command` with `args`, pinned to its digest.
fn plugin_section(name: &str, command: &Path, args: &[&str], extra: &str) -> String {
    format!(
        "[plugins.{name}]\ncommand = {:?}\nargs = {args:?}\nsha256 = \"{}\"\n{extra}\n",
        command.display().to_string(),
        sha256_hex(command),
    )
}

/// The PostgreSQL plugin out of process as `pg_ext`, and connection `pg`
/// on it with `extra` keys.
fn pg_out_of_process(db: &TestDb, extra: &str) -> String {
    format!(
        "{}\n{}{extra}\n",
        plugin_section("pg_ext", Path::new(LESSOR), &["plugin", "serve", "postgres"], ""),
        pg_connection(db, None).replace("plugin = \"postgres\"", "plugin = \"pg_ext\""),
    )
}

/// Runs the kit against `connection` of `config`; returns its table.
fn kit(config: &Path, connection: &str) -> String {
    let out =
        lessor(&["plugin", "test", "--config", &config.display().to_string(), "--connection", connection]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the kit failed on {connection}:\n{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.contains(", 0 failed"), "{table}");
    table
}

/// Asserts the kit ran the whole contract: what every plugin must pass.
fn assert_full_contract(table: &str) {
    for step in [
        "verify",
        "bad role options are refused, the key named",
        "revoke of an unknown user is success",
        "create",
        "revoke",
        "revoke again is success",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{step} ")) && l.contains(" ok ")),
            "no passing {step:?} in:\n{table}"
        );
    }
}

/// Asserts the kit logged in with the credential, saw it listed, and saw
/// both stop after the revoke: what a database-like plugin passes.
fn assert_login_contract(table: &str) {
    assert_full_contract(table);
    for step in [
        "the credential logs in",
        "list_users lists it",
        "after revoke it no longer logs in",
        "after revoke list_users does not list it",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(&format!("{step} ")) && l.contains(" ok ")),
            "no passing {step:?} in:\n{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes_for_postgres_in_and_out_of_process_and_for_mysql() {
    let db = TestDb::create().await;
    let my = MyDb::create().await;
    let (role, prefix) = unique_role("kit");
    let (my_role_name, my_prefix) = unique_role("mykit");
    db.track_prefix(&prefix);
    my.track_prefix(&my_prefix);
    let pg_in = pg_connection(&db, None).replace("[connections.pg]", "[connections.pg_in]");
    let body = format!(
        "{}\n{pg_in}\n{}\n{}\n{}\n{}",
        pg_out_of_process(&db, ""),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&format!("{role}_in"), "1h", "2h", &[CREATE_ROLE]).replace("\"pg\"", "\"pg_in\""),
        my.connection("my", ""),
        my_role(&my_role_name, "my", "1h", "2h", &[CREATE_USER]),
    );
    let daemon = Daemon::start_with_mysql(Some(&db), &my, &body, &[]).await;

    for connection in ["pg", "pg_in"] {
        let table = kit(&daemon.config_path, connection);
        assert_login_contract(&table);
        for step in
            ["renew", "set_password", "the new password logs in", "the old password no longer logs in"]
        {
            assert!(
                table.lines().any(|l| l.starts_with(&format!("{step} ")) && l.contains(" ok ")),
                "{step}:\n{table}"
            );
        }
    }
    assert_login_contract(&kit(&daemon.config_path, "my"));
    // The kit took away everything it made.
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "the kit left roles behind");
    assert!(my.users_with_prefix(&my_prefix).await.is_empty(), "the kit left users behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_kit_passes_for_aws_on_moto_and_for_the_python_rabbitmq_plugin() {
    let moto = Moto::start().await;
    let root = iam(&moto.endpoint, ("AKIAROOTROOTROOTROOT", "root-secret")).await;
    let (admin_id, admin_secret) = make_admin(&root, "lessor-kit-admin").await;
    // With authentication on, a key that no longer exists is refused.
    moto.enable_auth().await;
    let path = "/lessor/kit/";
    let body = format!(
        "{}\n[roles.batch]\nconnection = \"aws\"\ncredential_type = \"iam_user\"\nuser_path = {path:?}\n\
         default_ttl = \"1h\"\nmax_ttl = \"2h\"\n",
        crate::common::aws::aws_connection(&moto.endpoint, &admin_id),
    );
    let daemon = Daemon::start_aws(&admin_secret, &body, &[]).await;
    let table = kit(&daemon.config_path, "aws");
    assert_full_contract(&table);
    let admin = iam(&moto.endpoint, (&admin_id, &admin_secret)).await;
    assert!(
        crate::common::aws::users_under(&admin, path).await.is_empty(),
        "the kit left IAM users:\n{table}"
    );

    let node = Rabbitmq::from_env();
    let db = TestDb::create().await;
    let body = format!(
        "{}\n{}\n[roles.amqp_kit]\nconnection = \"rmq\"\nusername_template = \"v_kit_{{random}}\"\n\
         vhosts = {{ \"/\" = {{ read = \".*\" }} }}\n",
        node.plugin_section(),
        node.connection_section("rmq"),
    );
    let daemon = Daemon::start(&db, &body).await;
    let table = kit(&daemon.config_path, "rmq");
    assert_login_contract(&table);
    assert!(node.users_with_prefix("v_kit_").await.is_empty(), "the kit left RabbitMQ users:\n{table}");
}

/// The plugins `GET /v1/plugins` lists, by name.
async fn plugins(daemon: &Daemon) -> Vec<Value> {
    let response = daemon.client().plugins().await.expect("plugins");
    assert_eq!(response.status, 200, "{:?}", response.body);
    response.body["plugins"].as_array().cloned().unwrap_or_default()
}

async fn plugin(daemon: &Daemon, name: &str) -> Value {
    plugins(daemon)
        .await
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name}"))
}

/// Waits until plugin `name` runs in a process other than `not`, and
/// returns that process's pid.
async fn running_pid(daemon: &Daemon, name: &str, not: Option<u64>) -> u64 {
    wait_for("the plugin to be running", SETTLE, || async {
        let p = plugin(daemon, name).await;
        let pid = p["pid"].as_u64()?;
        (p["state"] == "running" && Some(pid) != not).then_some(pid)
    })
    .await
}

fn kill9(pid: u64) {
    // SAFETY: a signal to a process the daemon started for this test.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0, "kill -9 {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_digest_differs_is_refused_at_start_and_at_a_restart() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pg-plugin");
    std::fs::copy(LESSOR, &copy).unwrap();
    let pinned = sha256_hex(&copy);

    // At start: a pin that does not match names the file and both digests.
    let wrong = "0".repeat(64);
    let config = dir.path().join("wrong.toml");
    let section =
        plugin_section("pg_ext", &copy, &["plugin", "serve", "postgres"], "").replace(&pinned, &wrong);
    std::fs::write(
        &config,
        format!("{section}\n[connections.pg]\nplugin = \"pg_ext\"\nurl = \"postgres://x@127.0.0.1/x\"\n"),
    )
    .unwrap();
    let out = lessor(&["config", "check", &config.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong digest passed: {stderr}");
    for part in [copy.display().to_string(), pinned.clone(), wrong, "plugins.pg_ext".to_string()] {
        assert!(stderr.contains(&part), "the error does not name {part}: {stderr}");
    }

    // At a restart: the file swapped under a running daemon is not run.
    let (role, prefix) = unique_role("swap");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        plugin_section("pg_ext", &copy, &["plugin", "serve", "postgres"], ""),
        pg_connection(&db, None).replace("plugin = \"postgres\"", "plugin = \"pg_ext\""),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);
    let pid = running_pid(&daemon, "pg_ext", None).await;
    let planted = dir.path().join("planted");
    std::fs::copy(fixture(), &planted).unwrap();
    std::fs::rename(&planted, &copy).unwrap();
    kill9(pid);
    let refused = wait_for("the restart to be refused", SETTLE, || async {
        let p = plugin(&daemon, "pg_ext").await;
        let reason = p["reason"].as_str().unwrap_or_default().to_string();
        (p["state"] == "restarting" && reason.contains("sha256")).then_some(reason)
    })
    .await;
    assert!(refused.contains(&pinned), "{refused}");
    let answer = client.creds(&role, None).await.unwrap();
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.body["error"]["code"], "plugin_unavailable", "{:?}", answer.body);
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("pg_ext"), "{:?}", answer.body);

    // The pinned file back: the plugin comes back by itself.
    std::fs::copy(LESSOR, dir.path().join("restored")).unwrap();
    std::fs::rename(dir.path().join("restored"), &copy).unwrap();
    running_pid(&daemon, "pg_ext", Some(pid)).await;
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);
    assert!(plugin(&daemon, "pg_ext").await["restarts"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_plugin_under_load_gives_503s_then_no_orphan_and_every_lease_expires() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("k9");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_out_of_process(&db, ""), pg_role(&role, "20s", "1h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let mut pid = running_pid(&daemon, "pg_ext", None).await;
    let mut statuses = BTreeSet::new();
    for _round in 0..3 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut burst = Vec::new();
        for _ in 0..6 {
            let (client, role, stop) = (daemon.client(), role.clone(), stop.clone());
            burst.push(tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = client.creds(&role, None).await.expect("the daemon answers");
                    assert!(r.status == 200 || r.status == 503, "{} {:?}", r.status, r.body);
                    seen.insert(r.status);
                }
                seen
            }));
        }
        let wait = rand::random_range(100..800);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill9(pid);
        pid = running_pid(&daemon, "pg_ext", Some(pid)).await;
        // Issuance works again before the burst ends.
        wait_for("an issuance after the restart", SETTLE, || async {
            (daemon.client().creds(&role, None).await.ok()?.status == 200).then_some(())
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in burst {
            statuses.extend(task.await.unwrap());
        }
        // Zero orphans: the backend's roles are exactly the active leases'.
        let active = daemon.settled_active_usernames().await;
        let roles = db.roles_with_prefix(&prefix).await;
        assert_eq!(roles, active, "backend roles and active leases differ:\n{}", daemon.log());
    }
    assert!(statuses.contains(&503), "no issuance ever met the plugin down: {statuses:?}");
    assert!(plugin(&daemon, "pg_ext").await["restarts"].as_u64().unwrap() >= 3);
    assert!(daemon.metric("lessor_plugin_restarts_total").await >= 3.0);
    let listed = lessor(&["--socket", &daemon.socket.display().to_string(), "plugin", "list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && table.contains("pg_ext") && table.contains("external"), "{table}");

    // Every lease ends on time: 20 s leases, all gone well within the deadline.
    wait_for("every role to be dropped at its lease's expiry", SETTLE, || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
    wait_for("every lease to end", SETTLE, || async { daemon.leases().await.is_empty().then_some(()) }).await;
}

/// The fixture plugin as `faulty`, its faults switched in `dir`, and
/// connection `pg` on it.
fn faulty(db: &TestDb, dir: &Path, plugin_extra: &str, connection_extra: &str) -> String {
    let env = format!("env = {{ LESSOR_FIXTURE_DIR = {:?} }}\n{plugin_extra}", dir.display().to_string());
    format!(
        "{}\n{}{connection_extra}\n",
        plugin_section("faulty", &fixture(), &[], &env),
        pg_connection(db, None).replace("plugin = \"postgres\"", "plugin = \"faulty\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_hangs_is_cancelled_at_its_deadline_and_rolled_back_once_the_plugin_answers() {
    let db = TestDb::create().await;
    let faults = tempfile::tempdir().unwrap();
    let (role, prefix) = unique_role("hang");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        faulty(&db, faults.path(), "", "operation_timeout = \"1s\"\n"),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    std::fs::write(faults.path().join("hang"), "").unwrap();

    let answer = client.creds(&role, None).await.unwrap();
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("did not answer create"), "{:?}", answer.body);
    // Cancelled on the plugin's side too: its work was dropped.
    wait_for("the plugin to say its create was cancelled", SETTLE, || async {
        daemon.log().contains("create cancelled").then_some(())
    })
    .await;
    // The lease waits for its rollback: it is not active, and no role exists.
    let leases = daemon.leases().await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_ne!(leases[0]["state"], "active", "{leases:?}");
    assert!(db.roles_with_prefix(&prefix).await.is_empty());

    // The plugin answers again: the rollback goes through.
    std::fs::remove_file(faults.path().join("hang")).unwrap();
    wait_for("the lease to be rolled back", SETTLE, || async {
        daemon.leases().await.is_empty().then_some(())
    })
    .await;
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "{}", daemon.log());
    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    assert!(db.role_exists(issued.body["credential"]["username"].as_str().unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_a_plugin_prints_at_debug_stays_out_of_lessors_log() {
    let db = TestDb::create().await;
    let faults = tempfile::tempdir().unwrap();
    std::fs::write(faults.path().join("leak"), "").unwrap();
    let (role, prefix) = unique_role("leak");
    db.track_prefix(&prefix);
    for (log_level, relayed) in [("", false), ("log_level = \"debug\"\n", true)] {
        let body = format!(
            "{}\n{}",
            faulty(&db, faults.path(), log_level, ""),
            pg_role(&role, "1h", "2h", &[CREATE_ROLE])
        );
        // lessor's own log at debug: only the plugin's cap keeps its line out.
        let daemon = Daemon::start_with_env(&db, &body, &[("LESSOR_LOG", "debug")]).await;
        let issued = daemon.client().creds(&role, None).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        let user = issued.body["credential"]["username"].as_str().unwrap().to_string();
        let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
        // The plugin's INFO line is relayed, so its stderr is being read.
        wait_for("the plugin's line in lessor's log", SETTLE, || async {
            daemon.log().contains(&format!("create {user}")).then_some(())
        })
        .await;
        // Also lessor's own debug output holds no payload.
        assert!(daemon.log().contains("DEBUG"), "lessor did not log at debug");
        if relayed {
            // Raised to debug, whatever the plugin prints is relayed: the
            // operator's choice, and the plugin's responsibility.
            wait_for("the plugin's debug line", SETTLE, || async {
                daemon.log().contains(&password).then_some(())
            })
            .await;
        } else {
            assert!(
                !daemon.log().contains(&password),
                "the password reached lessor's log:\n{}",
                daemon.log()
            );
        }
    }
}

/// The uid a process runs as, from `/proc/PID/status`.
fn uid_of(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_runs_as_its_user_and_a_frozen_one_is_killed_and_restarted() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::create().await;
    // A copy of lessor where user nobody can run it.
    let dir = tempfile::Builder::new().prefix("lessor-plugin-bin-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("lessor");
    std::fs::copy(LESSOR, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (role, prefix) = unique_role("nobody");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        plugin_section("pg_ext", &copy, &["plugin", "serve", "postgres"], "user = \"nobody\"\n"),
        pg_connection(&db, None).replace("plugin = \"postgres\"", "plugin = \"pg_ext\""),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
    );
    let daemon = Daemon::start(&db, &body).await;
    let pid = running_pid(&daemon, "pg_ext", None).await;
    assert_eq!(uid_of(pid), 65534, "the plugin does not run as nobody");
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    assert!(db.role_exists(issued.body["credential"]["username"].as_str().unwrap()).await);

    // Frozen (SIGSTOP): it answers nothing, not even health checks, and is
    // killed and started again; issuance then works.
    // SAFETY: a signal to the plugin process the daemon started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let again = running_pid(&daemon, "pg_ext", Some(pid)).await;
    let p = plugin(&daemon, "pg_ext").await;
    assert!(p["restarts"].as_u64().unwrap() >= 1, "{p}");
    assert!(daemon.log().contains("health checks"), "{}", daemon.log());
    assert_eq!(uid_of(again), 65534);
    wait_for("an issuance after the restart", SETTLE, || async {
        (daemon.client().creds(&role, None).await.ok()?.status == 200).then_some(())
    })
    .await;
}
