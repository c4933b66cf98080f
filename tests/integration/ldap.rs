//! The LDAP plugin through the daemon, against a `slapd` of the test's own
//! (`tests/common/slapd.rs`, over ldaps:// with the test CA): an entry
//! issued by `lessor creds` binds (checked with OpenLDAP's `ldapwhoami`),
//! joins its groups, and is deleted on revocation, expiry and tidy; static
//! accounts rotate with a real bind after each rotation, and a rotation
//! whose bind test fails sets the current password back; kill -9 during
//! issuance leaves no entry behind.

use std::collections::BTreeSet;
use std::time::Duration;

use ldap3::{Scope, SearchEntry};
use serde_json::Value;

use crate::common::slapd::{Slapd, PEOPLE, READERS};
use crate::common::*;
use crate::rotation::{seal_key, settled, static_account};

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");
const SETTLE: Duration = Duration::from_secs(60);

/// A connection over ldaps:// and a role written as Vault's LDAP engine
/// docs write one.
fn config(server: &Slapd) -> String {
    let ca = crate::common::slapd::tls_dir().join("ca.pem");
    format!(
        r#"[connections.directory]
plugin = "ldap"
url = "{url}"
tls_ca_file = {ca:?}
password_env = "LESSOR_TEST_LDAP_ADMIN"
bind_dn = "cn=lessor,dc=lessor,dc=test"
userdn = "{PEOPLE}"
groupdn = "ou=groups,dc=lessor,dc=test"
tidy = true
tidy_prefix = "v_reader"
tidy_grace = "0s"

[roles.reader]
connection = "directory"
default_ttl = "1h"
max_ttl = "2h"
creation_ldif = """
dn: cn={{{{.Username}}}},{PEOPLE}
objectClass: inetOrgPerson
cn: {{{{.Username}}}}
sn: {{{{.RoleName}}}}
userPassword: {{{{.Password}}}}
"""
deletion_ldif = """
dn: cn={{{{.Username}}}},{PEOPLE}
changetype: delete
"""
groups = ["{READERS}"]
"#,
        url = server.ldaps_url(),
        ca = ca.display().to_string(),
    )
}

async fn start(db: &TestDb, server: &Slapd, body: &str) -> Daemon {
    Daemon::start_with_env(db, body, &[("LESSOR_TEST_LDAP_ADMIN", &server.admin_password)]).await
}

/// The `cn`s of the entries right under `ou=people` that start with `prefix`.
async fn entries(server: &Slapd, prefix: &str) -> BTreeSet<String> {
    let mut root = server.root().await;
    let ldap3::SearchResult(found, result) =
        root.search(PEOPLE, Scope::OneLevel, &format!("(cn={prefix}*)"), vec!["cn"]).await.unwrap();
    assert_eq!(result.rc, 0, "{result}");
    found.into_iter().filter_map(|e| SearchEntry::construct(e).attrs.remove("cn")?.pop()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_entries_are_issued_bound_revoked_expired_and_tidied() {
    let server = Slapd::start().await;
    let db = TestDb::create().await;
    let daemon = start(&db, &server, &config(&server)).await;
    let client = daemon.client();

    // Issued through the CLI: the DN binds, and the entry is a reader.
    let out = std::process::Command::new(LESSOR)
        .args(["creds", "reader", "--format", "json"])
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(issued["plugin"], "ldap");
    let credential = &issued["credential"];
    let user = credential["username"].as_str().unwrap().to_string();
    let dn = credential["distinguished_name"].as_str().unwrap().to_string();
    let password = credential["password"].as_str().unwrap().to_string();
    assert!(user.starts_with("v_reader_"), "{user}");
    assert_eq!(dn, format!("cn={user},{PEOPLE}"));
    let whoami = server.ldapwhoami(&dn, &password).expect("ldapwhoami binds as the issued entry");
    assert_eq!(whoami.to_lowercase(), format!("dn:{}", dn.to_lowercase()));
    assert!(server.values(READERS, "member").await.iter().any(|m| m.eq_ignore_ascii_case(&dn)));
    let stored = server.values(&dn, "userPassword").await;
    assert!(stored.iter().all(|v| v.starts_with("{SSHA512}")), "the directory holds {stored:?}");

    // `--format env`: the bind DN in the variable OpenLDAP's tools read.
    let out = std::process::Command::new(LESSOR)
        .args(["creds", "reader", "--format", "env"])
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.contains("export LDAPBINDDN='cn=v_reader_") && env.contains("export LDAP_PASSWORD="),
        "{env}"
    );

    // Revoked: the entry is gone, its bind refused, its membership removed.
    let revoked = client.revoke(issued["lease_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!server.exists(&dn).await, "the revoked entry is still there");
    assert_eq!(server.bind_rc(&dn, &password).await, 49, "the revoked entry binds");
    assert!(server.ldapwhoami(&dn, &password).is_err());
    assert!(!server.values(READERS, "member").await.iter().any(|m| m.eq_ignore_ascii_case(&dn)));

    // Expired: a 2 s lease's entry is deleted without being asked.
    let short = client.creds("reader", Some("2s")).await.unwrap();
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_dn = short.body["credential"]["distinguished_name"].as_str().unwrap().to_string();
    wait_for("the expired entry to be deleted", SETTLE, || async {
        (!server.exists(&short_dn).await).then_some(())
    })
    .await;

    // Tidy: an entry under the prefix no lease covers is deleted; live
    // leases' entries and entries outside the prefix stay.
    let live: BTreeSet<String> = entries(&server, "v_reader").await;
    server.add_person("v_reader_stray", "stray-password-0000").await;
    server.add_person("app_keep", "keep-password-0000").await;
    let swept = client.tidy(Some("directory"), false).await.unwrap();
    assert_eq!(swept.status, 200, "{:?}", swept.body);
    assert_eq!(
        swept.body["connections"][0]["dropped"],
        serde_json::json!(["v_reader_stray"]),
        "{:?}",
        swept.body
    );
    assert_eq!(entries(&server, "v_reader").await, live);
    assert!(server.exists(&format!("cn=app_keep,{PEOPLE}")).await);
    assert!(!daemon.log().contains(&password), "a password is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_static_accounts_rotate_with_a_bind_test_and_a_failed_test_sets_the_password_back() {
    let server = Slapd::start().await;
    let report = server.add_person("svc_report", "initial-report-password").await;
    let blue = server.add_person("svc_blue", "initial-blue-password").await;
    let green = server.add_person("svc_green", "initial-green-password").await;
    let db = TestDb::create().await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}\n{}",
        config(&server),
        static_account("report", "directory", "single", &["svc_report"], "overlap = \"0s\""),
        static_account("billing", "directory", "alternating", &["svc_blue", "svc_green"], "overlap = \"1h\""),
    );
    let daemon = start(&db, &server, &body).await;
    let password = |body: &Value| body["credential"]["password"].as_str().unwrap().to_string();

    // single: the first rotation at start-up; the new password binds, the
    // one it had does not.
    let v1 = settled(&daemon, "report", 1).await;
    let pw1 = password(&v1);
    server.ldapwhoami(&report, &pw1).expect("the rotated password binds");
    assert_eq!(server.bind_rc(&report, "initial-report-password").await, 49);
    assert!(server.values(&report, "userPassword").await.iter().all(|v| v.starts_with("{SSHA512}")));

    // alternating: both accounts bind during the overlap.
    let b1 = settled(&daemon, "billing", 1).await;
    let rotated = daemon.client().static_rotate("billing", Some("drill"), None).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let b2 = settled(&daemon, "billing", 2).await;
    assert_eq!(b1["credential"]["username"], "svc_blue");
    assert_eq!(b2["credential"]["username"], "svc_green");
    server.ldapwhoami(&blue, &password(&b1)).expect("the previous account binds during the overlap");
    server.ldapwhoami(&green, &password(&b2)).expect("the current account binds");

    // A disabled account fails the bind test: the rotation fails, and the
    // password it had is set back (it binds once enabled again). (A
    // ppolicy lock would not do: a password change clears it.)
    server.disable(&report).await;
    let failed = daemon.client().static_rotate("report", Some("drill"), Some("0s")).await.unwrap();
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    let now = daemon.client().static_get("report").await.unwrap();
    assert_eq!(now.body["version"], 1, "{:?}", now.body);
    let error = now.body["rotation"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("logging in with the new secret"), "{:?}", now.body);
    server.enable(&report).await;
    server.ldapwhoami(&report, &pw1).expect("the password before the failed rotation binds again");
    let retried = daemon.client().static_rotate("report", Some("drill"), Some("0s")).await.unwrap();
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    let v2 = settled(&daemon, "report", 2).await;
    server.ldapwhoami(&report, &password(&v2)).expect("the next rotation binds");
    assert!(!daemon.log().contains(&pw1), "a password is in the log");
}

/// kill -9 of the daemon during bursts of LDAP issuance leaves no entry
/// that no active lease covers (nor a lease without its entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ldap_issuance_leaves_no_orphan_entry() {
    let server = Slapd::start().await;
    let db = TestDb::create().await;
    let config = config(&server).replacen("tidy = true\n", &format!("tidy = true\n{SHORT_OPERATIONS}"), 1);
    let mut daemon = start(&db, &server, &config).await;
    kill_9_during_bursts(&mut daemon, "reader", 3, || async { entries(&server, "v_reader_").await }).await;
}

/// Vault's LDAP secrets engine paths, through the real `bao` CLI: `read
/// ldap/creds/ROLE` answers Vault's shape (`username`, `password`,
/// `distinguished_names`) with a lease under `ldap/creds/`, which `bao
/// lease revoke` ends; `read ldap/static-cred/NAME` and `write
/// ldap/rotate-role/NAME` serve static accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaults_ldap_engine_paths_issue_revoke_and_rotate_through_the_bao_cli() {
    use crate::vault::{bao_json, bao_ok};
    let server = Slapd::start().await;
    let report = server.add_person("svc_report", "initial-report-password").await;
    let db = TestDb::create().await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        config(&server),
        static_account("report", "directory", "single", &["svc_report"], "overlap = \"0s\""),
    );
    let daemon = start(&db, &server, &body).await;

    let read = bao_json(&daemon, &["read", "ldap/creds/reader"]);
    let lease_id = read["lease_id"].as_str().unwrap().to_string();
    assert!(lease_id.starts_with("ldap/creds/reader/"), "{read}");
    let data = &read["data"];
    let dn = data["distinguished_names"][0].as_str().unwrap().to_string();
    assert_eq!(dn, format!("cn={},{PEOPLE}", data["username"].as_str().unwrap()));
    server.ldapwhoami(&dn, data["password"].as_str().unwrap()).expect("the Vault-issued entry binds");
    bao_ok(&daemon, &["lease", "revoke", "-sync", &lease_id]);
    assert!(!server.exists(&dn).await, "the entry outlived its revoked Vault lease");
    // Not under the other engines' mounts.
    let out = crate::vault::run(crate::vault::bao_command(&daemon, &["read", "database/creds/reader"]));
    assert!(!out.status.success(), "an LDAP role answered under database/");

    let v1 = settled(&daemon, "report", 1).await;
    let cred = bao_json(&daemon, &["read", "ldap/static-cred/report"]);
    assert_eq!(cred["data"]["username"], "svc_report", "{cred}");
    assert_eq!(cred["data"]["password"], v1["credential"]["password"]);
    bao_ok(&daemon, &["write", "-f", "ldap/rotate-role/report"]);
    let v2 = settled(&daemon, "report", 2).await;
    let password = v2["credential"]["password"].as_str().unwrap();
    server.ldapwhoami(&report, password).expect("the password rotated through ldap/rotate-role binds");
    assert_eq!(bao_json(&daemon, &["read", "ldap/static-cred/report"])["data"]["password"], password);
}
