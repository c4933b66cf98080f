//! Tidy against real backends: users made by hand under a connection's
//! tidy_prefix are listed by `lessor tidy --dry-run` and dropped by
//! `lessor tidy`, exactly them, on PostgreSQL and MariaDB alike; users of
//! live leases and users outside the prefix are left alone; the grace
//! period holds young users back; the start-up sweep runs by itself.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::mysql::*;
use crate::common::*;

fn lessor(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(args)
        .env("LESSOR_SOCKET", socket)
        .output()
        .expect("run lessor")
}

fn lines(out: &Output) -> BTreeSet<String> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// Creates a PostgreSQL login role as the connection's admin would have.
async fn pg_stray(db: &TestDb, name: &str) {
    let admin = db.login(&db.admin, &db.admin_password).await.expect("login as the PostgreSQL admin");
    admin
        .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN PASSWORD 'x{}'", rand_suffix(12)))
        .await
        .unwrap();
}

fn tidy_keys(prefix: &str, grace: &str) -> String {
    format!("tidy = true\ntidy_prefix = \"{prefix}\"\ntidy_grace = \"{grace}\"\ntidy_interval = \"1h\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidy_drops_exactly_the_strays_on_postgres_and_mariadb() {
    let pg = TestDb::create().await;
    let my = MyDb::create().await;
    let tag = rand_suffix(6);
    let (pg_role_name, my_role_name) = (format!("tidypg_{tag}"), format!("tidymy_{tag}"));
    let (pg_prefix, my_prefix) = (format!("v_{pg_role_name}_"), format!("v_{my_role_name}_"));
    let (pg_outside, my_outside) = (format!("v_tidypgx_{tag}_keep"), format!("v_tidymyx_{tag}_keep"));
    for p in [&pg_prefix, &pg_outside] {
        pg.track_prefix(p);
    }
    for p in [&my_prefix, &my_outside] {
        my.track_prefix(p);
    }
    let pg_section = format!("{}{}", pg_connection(&pg, None), tidy_keys(&pg_prefix, "0s"));
    let body = format!(
        "{pg_section}\n{}\n{}\n{}",
        my.connection("my", &tidy_keys(&my_prefix, "0s")),
        pg_role(&pg_role_name, "1h", "2h", &[CREATE_ROLE]),
        my_role(&my_role_name, "my", "1h", "2h", &[CREATE_USER]),
    );
    let daemon = Daemon::start_with_mysql(Some(&pg), &my, &body, &[]).await;
    let client = daemon.client();
    // The start-up sweeps (one per connection, grace 0) run just after
    // readiness: let them pass before making strays, or they take them.
    wait_for("the start-up sweeps", Duration::from_secs(20), || async {
        (daemon.metric("lessor_tidy_runs_total").await >= 2.0).then_some(())
    })
    .await;

    // Users of live leases, on both backends.
    let mut leased = Vec::new();
    for role in [&pg_role_name, &pg_role_name, &my_role_name, &my_role_name] {
        let issued = client.creds(role, None).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        leased.push(issued.body["credential"]["username"].as_str().unwrap().to_string());
    }
    // Strays under each prefix, made by hand; look-alikes outside it; a
    // group role under the prefix (another role is its member).
    let pg_strays = [format!("{pg_prefix}stray_a"), format!("{pg_prefix}stray_b")];
    for name in &pg_strays {
        pg_stray(&pg, name).await;
    }
    pg_stray(&pg, &pg_outside).await;
    let group = format!("{pg_prefix}group");
    pg.su
        .batch_execute(&format!("CREATE ROLE \"{group}\" NOLOGIN; GRANT \"{group}\" TO \"{pg_outside}\""))
        .await
        .unwrap();
    let my_strays = [format!("{my_prefix}stray_a"), format!("{my_prefix}stray_b")];
    for name in &my_strays {
        my.create_user(name).await;
    }
    my.create_user(&my_outside).await;

    let expected = |verb: &str| -> BTreeSet<String> {
        pg_strays
            .iter()
            .map(|n| format!("pg: {verb} {n}"))
            .chain(my_strays.iter().map(|n| format!("my: {verb} {n}")))
            .collect()
    };

    // The dry run lists exactly the strays and drops nothing.
    assert_eq!(lines(&lessor(&daemon.socket, &["tidy", "--dry-run"])), expected("would drop"));
    let one = client.tidy(Some("pg"), true).await.unwrap();
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(one.body["connections"][0]["connection"], "pg");
    assert_eq!(one.body["connections"][0]["would_drop"], serde_json::json!(pg_strays));
    for name in &pg_strays {
        assert!(pg.role_exists(name).await, "the dry run dropped {name}");
    }
    for name in &my_strays {
        assert!(my.user_exists(name).await, "the dry run dropped {name}");
    }

    // The real run drops exactly them.
    assert_eq!(lines(&lessor(&daemon.socket, &["tidy"])), expected("dropped"));
    for name in &pg_strays {
        assert!(!pg.role_exists(name).await, "{name} survived tidy");
    }
    for name in &my_strays {
        assert!(!my.user_exists(name).await, "{name} survived tidy");
    }
    for name in &leased {
        let exists = if name.starts_with(&pg_prefix) {
            pg.role_exists(name).await
        } else {
            my.user_exists(name).await
        };
        assert!(exists, "tidy dropped {name}, which a live lease covers");
    }
    assert!(
        pg.role_exists(&pg_outside).await && pg.role_exists(&group).await,
        "tidy dropped outside its remit"
    );
    assert!(my.user_exists(&my_outside).await, "tidy dropped a user outside the prefix");
    assert_eq!(daemon.metric("lessor_tidy_dropped_total").await, 4.0);
    assert!(daemon.log().contains("tidy dropped a user no lease covers"));

    // Nothing left to do; a connection that does not exist is named.
    let again = lessor(&daemon.socket, &["tidy", "--dry-run"]);
    assert_eq!(lines(&again), BTreeSet::from(["nothing to drop (my, pg)".to_string()]));
    let unknown = lessor(&daemon.socket, &["tidy", "--connection", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown connection \"nope\""));
    let bad = client
        .request(hyper::Method::POST, "/v1/tidy", Some(&serde_json::json!({"dryrun": true})))
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{:?}", bad.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_holds_young_users_and_start_up_sweeps_by_itself() {
    let pg = TestDb::create().await;
    let my = MyDb::create().await;
    let tag = rand_suffix(6);
    let young = format!("v_tyoung_{tag}_");
    let old = format!("v_told_{tag}_");
    let seen = format!("v_tseen_{tag}_");
    my.track_prefix(&young);
    my.track_prefix(&old);
    pg.track_prefix(&seen);
    // Made before the daemon starts.
    my.create_user(&format!("{young}x")).await;
    my.create_user(&format!("{old}x")).await;
    pg_stray(&pg, &format!("{seen}x")).await;

    let body = format!(
        "{}{}\n{}\n{}",
        pg_connection(&pg, None),
        // PostgreSQL keeps no creation time: the grace counts from the
        // start-up sweep that first sees the role.
        tidy_keys(&seen, "20s"),
        my.connection("my_young", &tidy_keys(&young, "1h")),
        my.connection("my_old", &tidy_keys(&old, "0s")),
    );
    let daemon = Daemon::start_with_mysql(Some(&pg), &my, &body, &[]).await;

    wait_for("the start-up sweep to drop the stray", Duration::from_secs(20), || async {
        (!my.user_exists(&format!("{old}x")).await).then_some(())
    })
    .await;
    // Still young right after start-up: a sweep now sees it and keeps it
    // (20 s of grace from the first sweep that saw it is far above the
    // time this takes); the follow-up sweep drops it without being asked.
    let now = lessor(&daemon.socket, &["tidy", "--connection", "pg", "--dry-run"]);
    assert_eq!(lines(&now), BTreeSet::from(["nothing to drop (pg)".to_string()]));
    assert!(pg.role_exists(&format!("{seen}x")).await, "a role younger than the grace was dropped");
    wait_for("the follow-up sweep to drop the PostgreSQL stray", Duration::from_secs(90), || async {
        (!pg.role_exists(&format!("{seen}x")).await).then_some(())
    })
    .await;
    // MariaDB says the user is seconds old: an hour's grace keeps it.
    assert!(my.user_exists(&format!("{young}x")).await, "a user younger than the grace was dropped");
    let dry = lessor(&daemon.socket, &["tidy", "--connection", "my_young", "--dry-run"]);
    assert_eq!(lines(&dry), BTreeSet::from(["nothing to drop (my_young)".to_string()]));
}

/// An operator's `force` against a backend that refuses: the lease is
/// dropped at once and the user is left behind on the server; once
/// the backend answers, tidy finds the user no lease covers and drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_revocation_leaves_the_user_to_tidy() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("forced");
    db.track_prefix(&prefix);
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let body = format!(
        "{}{}\n{}",
        pg_connection(&db, Some(proxy.port)),
        tidy_keys(&prefix, "0s"),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    // The start-up sweep runs just after readiness: let it pass first.
    wait_for("the start-up sweep", Duration::from_secs(20), || async {
        (daemon.metric("lessor_tidy_runs_total").await >= 1.0).then_some(())
    })
    .await;
    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();

    proxy.cut();
    let forced = client.revoke_prefix(&format!("{role}/"), true).await.unwrap();
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    assert_eq!(forced.body["revoked"], 1, "{:?}", forced.body);
    // The lease is dropped from lessor's books, the role stays on the server.
    let lease = client.lease_get(&lease_id).await.unwrap();
    assert_eq!(lease.status, 404, "{:?}", lease.body);
    assert!(db.role_exists(&username).await, "the backend was cut off, yet the role went");

    // Tidy cannot reach the backend either: it says so and drops nothing.
    let refused = client.tidy(Some("pg"), false).await.unwrap();
    assert_eq!(refused.status, 200, "{:?}", refused.body);
    let report = &refused.body["connections"][0];
    assert!(report["errors"].to_string().contains("unreachable"), "{report}");
    assert_eq!(report["dropped"], serde_json::json!([]), "{report}");
    assert!(db.role_exists(&username).await);

    proxy.restore();
    let swept = wait_for("tidy to reach the backend again", Duration::from_secs(60), || async {
        let swept = client.tidy(Some("pg"), false).await.unwrap();
        assert_eq!(swept.status, 200, "{:?}", swept.body);
        let report = swept.body["connections"][0].clone();
        (report["errors"] == serde_json::json!([])).then_some(report)
    })
    .await;
    assert_eq!(swept["dropped"], serde_json::json!([username.clone()]), "{swept}");
    assert!(!db.role_exists(&username).await, "tidy left the role a forced revocation left behind");
}
