//! The command line against the real daemon: `creds --format env`, `lease`
//! subcommands, `config check`, and the socket's ownership rules.

use std::process::{Command, Output};

use crate::common::*;

fn lessor(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(args)
        .env("LESSOR_SOCKET", socket)
        .output()
        .expect("run lessor")
}

/// Parses `export NAME='value'` lines as a shell would.
fn exports(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("export ")?.split_once('=')?;
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?.replace("'\\''", "'");
            Some((name.to_string(), value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_env_then_renew_and_revoke_from_the_cli() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("cli");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;

    let out = lessor(&daemon.socket, &["creds", &role, "--ttl", "10m", "--format", "env"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vars = exports(&String::from_utf8(out.stdout).unwrap());
    let lease_id = &vars["LESSOR_LEASE_ID"];
    let user = &vars["PGUSER"];
    db.login(user, &vars["PGPASSWORD"]).await.expect("login with PGUSER/PGPASSWORD");

    let out = lessor(&daemon.socket, &["lease", "renew", lease_id, "--increment", "30m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The renewal reached the server: VALID UNTIL is the lease's new end,
    // about 30 minutes out rather than the 10 it was issued with.
    let shown = daemon.client().lease_get(lease_id).await.unwrap().body;
    assert_valid_until_is(&db, user, &shown).await;
    let ends: chrono::DateTime<chrono::Utc> = shown["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(ends > chrono::Utc::now() + chrono::Duration::minutes(25), "renewed to {ends}");
    let out = lessor(&daemon.socket, &["lease", "list", "--prefix", &format!("{role}/")]);
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains(lease_id.as_str()) && listing.contains("active"), "{listing}");
    assert!(!listing.contains(&vars["PGPASSWORD"]));

    let out = lessor(&daemon.socket, &["lease", "revoke", lease_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!db.role_exists(user).await);

    // Failures: one line on stderr, non-zero exit.
    let out = lessor(&daemon.socket, &["creds", "no_such_role"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("lessor: ") && stderr.contains("unknown role"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let out = lessor(&daemon.dir.path().join("nope.sock"), &["status"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("sock");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let mut daemon = Daemon::start(&db, &body).await;
    // The same socket with a store of its own (the same store would be
    // refused first: one daemon per store).
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let second_config = daemon.dir.path().join("second.toml");
    std::fs::write(&second_config, config.replace("lessor.db", "second.db")).unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["serve", "--config"])
        .arg(&second_config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another lessor is already listening"), "{stderr}");
    assert_eq!(daemon.client().health().await.unwrap().status, 200, "the live daemon was disturbed");

    // SIGKILL leaves the socket file behind; the next start replaces it.
    daemon.kill9();
    assert!(daemon.socket.exists());
    daemon.spawn().await;
    assert_eq!(daemon.client().health().await.unwrap().status, 200);
}

#[test]
fn config_check_reports_every_problem_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[connections.pg]
plugin = "postgres"
url = "postgres://admin@127.0.0.1:5432/app"

[roles.a]
connection = "pg"
default_ttl = "48h"
max_ttl = "24h"
creation_statements = ["CREATE ROLE \"{{name}}\" PASSWORD '{{pasword}}'"]

[roles.b]
connection = "missing"

[roles.c]
connection = "pg"
username_template = "v_{role}_{random}_and_a_very_long_suffix_that_cannot_fit_in_sixty_three"
creation_statements = ["CREATE ROLE \"{{name}}\""]
"#,
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = path.display().to_string();
    for needle in [
        format!("{file}: roles.a.default_ttl: 2d is longer than max_ttl 1d"),
        "roles.a.creation_statements".to_string(),
        "{{pasword}}".to_string(),
        format!("{file}: roles.b.connection: unknown connection \"missing\""),
        format!("{file}: roles.c.username_template"),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in:\n{stderr}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://admin@127.0.0.1/app\"\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
