//! Who may do what: `[[policies]]` matched on the caller's identity
//! (uid, supplementary group, executable, cgroup and systemd unit), lease
//! ownership, operator-only actions and `max_leases`, with the clients
//! run as other users and the backend checked for what was (not) created.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::*;
use crate::trust::{cgroup2_root, TestCgroup};

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The credential a successful `lessor creds ROLE --format json` printed.
fn issued(out: &Output) -> Value {
    assert!(out.status.success(), "creds failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("creds prints JSON")
}

/// A copy of the lessor binary at a path of its own that other users can
/// run, for exe matching.
fn lessor_copy(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::copy(LESSOR, &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// The name of a group that exists on every Debian system (gid 4, `adm`).
fn name_of_gid(gid: u32) -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    groups
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.get(2) == Some(&gid.to_string().as_str())).then(|| fields[0].to_string())
        })
        .unwrap_or_else(|| panic!("no group with gid {gid} in /etc/group"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_grants_its_roles_only_to_the_identities_it_matches() {
    let db = TestDb::create().await;
    let (a, prefix_a) = unique_role("pol_a");
    let (b, prefix_b) = unique_role("pol_b");
    db.track_prefix(&prefix_a);
    db.track_prefix(&prefix_b);
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let special = lessor_copy(bin_dir.path(), "lessor-special");
    let adm = name_of_gid(4);
    let body = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&a, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&b, "1h", "2h", &[CREATE_ROLE]),
        policy("nobody_a", "user = \"nobody\"", &[&format!("creds:{a}")], ""),
        policy("by_group", &format!("group = {adm:?}"), &[&format!("creds:{b}")], ""),
        policy("by_exe", &format!("exe = {special:?}, uid = 65533"), &[&format!("creds:{b}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();

    // nobody: A yes, B no, with a message naming the permission.
    let mine = issued(&daemon.as_nobody(LESSOR).args(["creds", &a, "--format", "json"]).output().unwrap());
    assert!(db.role_exists(mine["credential"]["username"].as_str().unwrap()).await);
    let out = daemon.as_nobody(LESSOR).args(["creds", &b]).output().unwrap();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains(&format!("uid 65534 (nobody) may not issue role \"{b}\"")), "{message}");
    assert!(message.contains(&format!("permission \"creds:{b}\"")), "{message}");
    assert!(message.contains("nobody_a") && message.contains("HTTP 403"), "{message}");
    assert!(db.roles_with_prefix(&prefix_b).await.is_empty(), "a refused issuance made a role");

    // A uid no policy matches gets nothing, not even whether a role exists.
    for role in [a.as_str(), "no_such_role"] {
        let out = daemon.as_user(65532, 65532, LESSOR).args(["creds", role]).output().unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no [[policies]] entry matches it"), "{}", stderr(&out));
    }

    // A supplementary group matches by name.
    let out = Command::new("setpriv")
        .args(["--reuid=65532", "--regid=65532", "--groups=4", LESSOR, "creds", &b, "--format", "json"])
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    let by_group = issued(&out);
    assert!(db.role_exists(by_group["credential"]["username"].as_str().unwrap()).await);

    // The executable matches by path: the same uid with another binary does not.
    let refused = daemon.as_user(65533, 65533, LESSOR).args(["creds", &b]).output().unwrap();
    assert!(!refused.status.success(), "exe policy matched the wrong binary");
    let by_exe = issued(
        &daemon.as_user(65533, 65533, &special).args(["creds", &b, "--format", "json"]).output().unwrap(),
    );
    let lease = daemon.client().lease_get(by_exe["lease_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(lease.body["owner"]["policy"], "by_exe", "{:?}", lease.body);
    assert_eq!(lease.body["owner"]["uid"], 65533);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_and_systemd_unit_policies_match_a_process_moved_into_a_test_cgroup() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("pol_cg");
    db.track_prefix(&prefix);
    let unit = format!("lessor-test-{}.scope", std::process::id());
    let root = cgroup2_root();
    let cgroup = TestCgroup(root.join(&unit));
    std::fs::create_dir(&cgroup.0).unwrap();
    let body = format!(
        "{}\n{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy(
            "by_unit",
            "systemd_unit = \"lessor-test-*.scope\", uid = 65534",
            &[&format!("creds:{role}")],
            ""
        ),
        policy("by_cgroup", &format!("cgroup = \"/{unit}\", uid = 65532"), &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();

    // A shell moves itself into the cgroup, then drops to the uid and runs
    // the client: the client's /proc/<pid>/cgroup names the test's cgroup.
    let run_in_cgroup = |uid: u32, inside: bool| {
        let procs = cgroup.0.join("cgroup.procs");
        let enter = if inside { format!("echo $$ > {} && ", procs.display()) } else { String::new() };
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{enter}exec setpriv --reuid={uid} --regid={uid} --clear-groups {LESSOR} creds {role} --format json"
            ))
            .env("LESSOR_SOCKET", &daemon.socket)
            .output()
            .unwrap()
    };
    for (uid, policy) in [(65534, "by_unit"), (65532, "by_cgroup")] {
        let outside = run_in_cgroup(uid, false);
        assert!(!outside.status.success(), "uid {uid} outside the cgroup was granted");
        assert!(stderr(&outside).contains("HTTP 403"), "{}", stderr(&outside));
        let inside = issued(&run_in_cgroup(uid, true));
        assert!(db.role_exists(inside["credential"]["username"].as_str().unwrap()).await);
        let lease = daemon.client().lease_get(inside["lease_id"].as_str().unwrap()).await.unwrap();
        assert_eq!(lease.body["owner"]["policy"], policy, "{:?}", lease.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_its_owners_and_admins_alone() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("own");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("apps", "gid = 65534", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let x = issued(
        &daemon.as_user(65534, 65534, LESSOR).args(["creds", &role, "--format", "json"]).output().unwrap(),
    );
    let x_id = x["lease_id"].as_str().unwrap();
    let x_user = x["credential"]["username"].as_str().unwrap();
    // Y: another uid under the same policy.
    let y = |args: &[&str]| daemon.as_user(65533, 65534, LESSOR).args(args).output().unwrap();
    let y_lease = issued(&y(&["creds", &role, "--format", "json"]));

    // Another uid's lease is no lease to Y: the answer for an unknown id
    // (tests/integration/strangers.rs compares the two byte for byte).
    for args in [vec!["lease", "show", x_id], vec!["lease", "renew", x_id], vec!["lease", "revoke", x_id]] {
        let out = y(&args);
        assert!(!out.status.success(), "{args:?} worked on another uid's lease");
        assert!(
            stderr(&out).contains(&format!("unknown lease \"{x_id}\"")) && stderr(&out).contains("HTTP 404"),
            "{}",
            stderr(&out)
        );
    }
    assert!(db.role_exists(x_user).await, "a refused revoke removed the role");
    let listed: Value = serde_json::from_slice(&y(&["lease", "list", "--format", "json"]).stdout).unwrap();
    let ids: Vec<&str> =
        listed["leases"].as_array().unwrap().iter().map(|l| l["lease_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [y_lease["lease_id"].as_str().unwrap()], "Y listed others' leases");

    // Tidy and rotate-root are for admins too.
    for args in [vec!["tidy"], vec!["rotate-root", "pg"]] {
        let out = y(&args);
        assert!(
            !out.status.success() && stderr(&out).contains("is for admins"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // The admin (root, this test) reads, renews and revokes anyone's.
    let client = daemon.client();
    assert_eq!(client.lease_get(x_id).await.unwrap().status, 200);
    let renewed = client.renew(x_id, Some("30m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    assert_valid_until_is(&db, x_user, &renewed.body).await;
    assert_eq!(client.revoke(x_id).await.unwrap().status, 200);
    assert!(!db.role_exists(x_user).await);
    let admin_list = client.lease_list_all(Some(&format!("{role}/"))).await.unwrap();
    assert_eq!(admin_list.body["leases"].as_array().unwrap().len(), 1, "the admin lists every live lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_leases_refuses_the_one_too_many_until_a_lease_is_revoked_and_holds_across_restarts() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("quota");
    let (other, other_prefix) = unique_role("quota_b");
    db.track_prefix(&prefix);
    db.track_prefix(&other_prefix);
    let body = format!(
        "{}\n{}max_leases = 2\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        pg_role(&other, "1h", "2h", &[CREATE_ROLE]),
        policy(
            "capped",
            "uid = 65534",
            &[&format!("creds:{role}"), &format!("creds:{other}")],
            "max_leases = 3"
        ),
    );
    let mut daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let client = daemon.client();
    let first = client.creds(&role, None).await.unwrap();
    let second = client.creds(&role, None).await.unwrap();
    assert_eq!((first.status, second.status), (200, 200));
    let third = client.creds(&role, None).await.unwrap();
    assert_eq!(third.status, 429, "{:?}", third.body);
    assert_eq!(third.body["error"]["code"], "quota_exceeded");
    let message = third.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("role \"{role}\" holds 2 live leases, its max_leases is 2")),
        "{message}"
    );
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2, "the refused issuance reached the backend");

    let freed = first.body["lease_id"].as_str().unwrap();
    assert_eq!(client.revoke(freed).await.unwrap().status, 200);
    let again = client.creds(&role, None).await.unwrap();
    assert_eq!(again.status, 200, "{:?}", again.body);
    let freed_user = first.body["credential"]["username"].as_str().unwrap();
    let held: std::collections::BTreeSet<String> = [&second, &again]
        .iter()
        .map(|r| r.body["credential"]["username"].as_str().unwrap().to_string())
        .collect();
    assert!(!db.role_exists(freed_user).await, "the freed lease's role is still on the server");
    assert_eq!(
        db.roles_with_prefix(&prefix).await,
        held,
        "the server holds exactly the two live leases' roles"
    );

    // The counts come back from the store after a restart.
    daemon.stop();
    daemon.spawn().await;
    daemon.open_to_all_users();
    let client = daemon.client();
    let after_restart = client.creds(&role, None).await.unwrap();
    assert_eq!(after_restart.status, 429, "{:?}", after_restart.body);
    assert_eq!(
        db.roles_with_prefix(&prefix).await,
        held,
        "the refusal after the restart reached the backend"
    );

    // A policy's limit counts all its roles together.
    let mine = |r: &str| daemon.as_nobody(LESSOR).args(["creds", r, "--format", "json"]).output().unwrap();
    for r in [&other, &other, &other] {
        issued(&mine(r));
    }
    let out = mine(&other);
    assert!(
        stderr(&out).contains("policy \"capped\" holds 3 live leases, its max_leases is 3"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("HTTP 429"), "{}", stderr(&out));
    assert_eq!(
        db.roles_with_prefix(&other_prefix).await.len(),
        3,
        "the policy's refusal reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_policies_only_admins_issue_and_the_log_says_how_to_grant() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("nopol");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let out = daemon.as_nobody(LESSOR).args(["creds", &role]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no [[policies]] are configured, so only admins may"), "{}", stderr(&out));
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    assert!(daemon.log().contains("no [[policies]] configured"), "{}", daemon.log());
    assert_eq!(daemon.client().creds(&role, None).await.unwrap().status, 200, "root is an admin");
}
