//! A GRANT that PostgreSQL refuses because the object's ACL is full
//! (SQLSTATE 54000 "row is too big", at about 2 400 direct grants on one
//! table): the issuance fails cleanly with an error naming the table and
//! the group-role pattern; and `config check` warns about direct grants.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Fills `table`'s ACL with direct grants to NOLOGIN roles named
/// `prefix` + a number until PostgreSQL refuses the next one; returns how
/// many fit.
async fn fill_acl(db: &TestDb, table: &str, prefix: &str) -> i32 {
    db.track_prefix(prefix);
    db.su
        .batch_execute(&format!(
            "CREATE TABLE {table} (x int); ALTER TABLE {table} OWNER TO {admin};
             CREATE FUNCTION fill_acl() RETURNS int LANGUAGE plpgsql AS $$
             DECLARE i int := 0;
             BEGIN
               LOOP
                 i := i + 1;
                 EXECUTE format('CREATE ROLE %I NOLOGIN', '{prefix}' || i);
                 BEGIN
                   EXECUTE format('GRANT SELECT ON {table} TO %I', '{prefix}' || i);
                 EXCEPTION WHEN program_limit_exceeded THEN
                   RETURN i - 1;
                 END;
                 IF i > 20000 THEN RAISE 'the ACL of {table} never filled'; END IF;
               END LOOP;
             END $$;",
            admin = db.admin
        ))
        .await
        .unwrap();
    db.su.query_one("SELECT fill_acl()", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_on_a_full_acl_names_the_table_and_the_group_role_pattern_and_leaves_no_role() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("aclfull");
    db.track_prefix(&prefix);
    let filled = fill_acl(&db, "acl_full", &format!("lt_acl_{}_", rand_suffix(6))).await;
    assert!(filled > 1000, "only {filled} grants fit");

    let body = format!(
        "{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE, "GRANT SELECT ON acl_full TO \"{{name}}\""]),
    );
    let daemon = Daemon::start(&db, &body).await;
    // The load warned about the direct grant.
    let log = daemon.log();
    assert!(log.contains("grants on acl_full to each user directly"), "{log}");

    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert!(issued.status >= 400, "{issued:?}");
    let message = issued.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("the ACL of acl_full is full"), "{message}");
    assert!(message.contains("SQLSTATE 54000"), "{message}");
    assert!(message.contains("NOLOGIN group role") && message.contains("GRANT app_readers TO"), "{message}");

    // The pending lease was rolled back and PostgreSQL has no role for it.
    let active = daemon.settled_active_usernames().await;
    assert!(active.is_empty(), "{active:?}");
    wait_for("no role of the failed issuance", Duration::from_secs(30), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
    let grantees: i64 = db
        .su
        .query_one(
            "SELECT count(DISTINCT grantee) FROM aclexplode((SELECT relacl FROM pg_class WHERE relname = 'acl_full'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The fillers and the owner; nothing of the failed user.
    assert_eq!(grantees, i64::from(filled) + 1);
}

#[test]
fn config_check_warns_about_direct_grants_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lessor.toml");
    std::fs::write(
        &path,
        r#"
[connections.pg]
plugin = "postgres"
url = "postgres://admin@127.0.0.1:5432/app"

[roles.direct]
connection = "pg"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\"",
]

[roles.grouped]
connection = "pg"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT app_read TO \"{{name}}\"",
]
"#,
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning failed the check: {stderr}");
    assert!(
        stderr.contains(
            "roles.direct.creation_statements: statement 2 of 2 grants on ALL TABLES IN SCHEMA public to each user directly"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("GRANT app_readers TO"), "{stderr}");
    assert!(!stderr.contains("roles.grouped"), "{stderr}");
}
