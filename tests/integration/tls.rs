//! TLS to the backends, against the test servers that `scripts/test` gives
//! a certificate from its own CA: the password-auth PostgreSQL cluster
//! (`ssl = on`; members of `lessor_tls_only` may log in over TLS only) and a
//! second MariaDB with TLS. Checked on the servers' side: `pg_stat_ssl` for
//! lessor's admin sessions, admin users that `REQUIRE SSL`, logins by psql.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::mysql::*;
use crate::common::*;

/// The test CA's folder (`scripts/test` makes it).
fn tls_dir() -> PathBuf {
    PathBuf::from(std::env::var("LESSOR_TEST_TLS_DIR").expect(
        "LESSOR_TEST_TLS_DIR is not set: run the TLS tests through scripts/test (or eval \"$(scripts/test --env)\")",
    ))
}

fn tls_file(name: &str) -> String {
    tls_dir().join(name).display().to_string()
}

/// A TestDb whose admin may log in over TLS only: any connection lessor
/// opened without it would be refused by the server.
async fn tls_only_db() -> TestDb {
    let db = TestDb::create().await;
    db.su.batch_execute(&format!("GRANT lessor_tls_only TO {}", db.admin)).await.unwrap();
    db
}

fn pg_tls_connection(db: &TestDb, host: &str, query: &str) -> String {
    format!(
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://{}@{host}:{}/{}?{query}\"\npassword_file = \"PASSWORD_FILE\"\nmax_connections = 8\n",
        db.admin, db.port, db.database
    )
}

/// `(count, all encrypted)` of `user`'s sessions, from `pg_stat_ssl`.
async fn pg_sessions_encrypted(db: &TestDb, user: &str) -> (i64, bool) {
    let row = db
        .su
        .query_one(
            "SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Logs in with psql over `verify-full` as `user`; Ok with what the query printed.
fn psql_verify_full(db: &TestDb, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let conninfo = format!(
        "host=localhost port={} dbname={} user={user} sslmode=verify-full sslrootcert={}",
        db.port,
        db.database,
        tls_file("ca.pem")
    );
    let out = Command::new("psql")
        .args(["-X", "-w", "-Atq", &conninfo, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_verify_full_issues_renews_and_revokes_over_tls() {
    let db = tls_only_db().await;
    let (role, prefix) = unique_role("tls");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        pg_tls_connection(
            &db,
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={}", tls_file("ca.pem"))
        ),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE, "GRANT lessor_tls_only TO \"{{name}}\""])
    );
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();

    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
    assert!(db.role_exists(&username).await);
    // The issued role may log in over TLS only, and does, with psql.
    assert_eq!(psql_verify_full(&db, &username, &password, "SELECT current_user").unwrap(), username);

    // Every admin session lessor holds is encrypted, as the server sees it.
    let (sessions, encrypted) = pg_sessions_encrypted(&db, &db.admin).await;
    assert!(sessions >= 1 && encrypted, "{sessions} admin sessions, all encrypted: {encrypted}");
    let log = wait_for("the start-up TLS line", Duration::from_secs(20), || async {
        let log = daemon.log();
        log.contains("admin connection").then_some(log)
    })
    .await;
    assert!(log.contains("TLSv1.3") && log.contains("chain and host name verified"), "{log}");

    let before = db.valid_until(&username).await.expect("VALID UNTIL set at creation");
    let renewed = client.renew(&lease_id, Some("20m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    // The renewal reached the server over TLS: VALID UNTIL is the renewed
    // expiry (to the second), no longer the one creation set.
    let expires = chrono::DateTime::parse_from_rfc3339(renewed.body["expires_at"].as_str().unwrap())
        .expect("an RFC 3339 expiry")
        .with_timezone(&chrono::Utc);
    let after = db.valid_until(&username).await.expect("VALID UNTIL after renewal");
    assert_ne!(after, before, "the renewal left VALID UNTIL as creation set it");
    assert!((after - expires).num_seconds().abs() <= 1, "VALID UNTIL {after}, lease expires {expires}");
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert!(revoked.status == 200 || revoked.status == 204, "{:?}", revoked.body);
    assert!(!db.role_exists(&username).await, "the role survived its revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_unknown_ca_fails_at_start_and_issuance_creates_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("tlsca");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        pg_tls_connection(
            &db,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", tls_file("other-ca.pem"))
        ),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE])
    );
    let daemon = Daemon::start(&db, &body).await;
    let log = wait_for("the failed start-up check", Duration::from_secs(20), || async {
        let log = daemon.log();
        log.contains("backend check failed").then_some(log)
    })
    .await;
    let line = log.lines().find(|l| l.contains("backend check failed")).unwrap();
    assert!(line.contains("connection pg") && line.contains("unknown issuer"), "{line}");

    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 502, "{:?}", issued.body);
    let message = issued.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown issuer") && message.contains("connection pg"), "{message}");
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a role was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_host_the_certificate_does_not_name_is_a_name_mismatch_unless_verify_ca() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("tlsname");
    db.track_prefix(&prefix);
    let (ca_role, ca_prefix) = unique_role("tlsvca");
    db.track_prefix(&ca_prefix);
    // The server listens on 127.0.0.2 too; its certificate names localhost
    // and 127.0.0.1 only.
    let ca = tls_file("ca.pem");
    let body = format!(
        "{}\n{}\n{}\n{}",
        pg_tls_connection(&db, "127.0.0.2", &format!("sslmode=verify-full&sslrootcert={ca}")),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE]),
        pg_tls_connection(&db, "127.0.0.2", &format!("sslmode=verify-ca&sslrootcert={ca}"))
            .replace("[connections.pg]", "[connections.pg_ca]"),
        pg_role(&ca_role, "10m", "1h", &[CREATE_ROLE])
            .replace("connection = \"pg\"", "connection = \"pg_ca\""),
    );
    let daemon = Daemon::start(&db, &body).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 502, "{:?}", issued.body);
    let message = issued.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("name mismatch") && message.contains("127.0.0.2"), "{message}");
    assert!(message.contains("it names localhost, 127.0.0.1"), "{message}");
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a role was created");

    // verify-ca checks the chain only: the same host works.
    let issued = daemon.client().creds(&ca_role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    assert!(db.role_exists(issued.body["credential"]["username"].as_str().unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_client_certificate_authenticates_the_admin() {
    // The client certificate's CN; certificate logins are for members of
    // lessor_cert_users (scripts/test's pg_hba).
    const CERT_ADMIN: &str = "lessor_cert_admin";
    let db = TestDb::create().await;
    db.su
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{CERT_ADMIN}') THEN \
             CREATE ROLE {CERT_ADMIN} LOGIN CREATEROLE IN ROLE lessor_cert_users; END IF; END $$"
        ))
        .await
        .unwrap();
    let (role, prefix) = unique_role("tlscert");
    db.track_prefix(&prefix);
    let body = format!(
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://{CERT_ADMIN}@localhost:{}/{}?sslmode=verify-full\"\n\
         tls_ca_file = {:?}\ntls_client_cert_file = {:?}\ntls_client_key_file = {:?}\n\n{}",
        db.port,
        db.database,
        tls_file("ca.pem"),
        tls_file("client.pem"),
        tls_file("client.key"),
        pg_role(&role, "10m", "1h", &[CREATE_ROLE])
    );
    // No password file at all: the certificate is the admin's credential.
    let daemon = Daemon::start(&db, &body).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    assert!(db.role_exists(&username).await);
    let (sessions, encrypted) = pg_sessions_encrypted(&db, CERT_ADMIN).await;
    assert!(sessions >= 1 && encrypted, "{sessions} admin sessions, all encrypted: {encrypted}");
    let revoked = daemon.client().revoke(&lease_id).await.unwrap();
    assert!(revoked.status == 200 || revoked.status == 204, "{:?}", revoked.body);
    assert!(!db.role_exists(&username).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_static_rotation_tests_the_login_over_tls() {
    let db = tls_only_db().await;
    let account = format!("st_tls_{}", rand_suffix(6));
    db.track_prefix(&account);
    db.su
        .batch_execute(&format!(
            "CREATE ROLE \"{account}\" LOGIN PASSWORD 'initial-{}' IN ROLE lessor_tls_only",
            rand_suffix(16)
        ))
        .await
        .unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("seal.key");
    lessor::seal::write_new_key(&key).unwrap();
    let body = format!(
        "seal_key_file = {:?}\n\n{}\n[static_accounts.tls_billing]\nconnection = \"pg\"\nstrategy = \"single\"\nusernames = [{account:?}]\nrotation_period = \"1h\"\noverlap = \"0s\"\n",
        key.display().to_string(),
        pg_tls_connection(&db, "localhost", &format!("sslmode=verify-full&sslrootcert={}", tls_file("ca.pem"))),
    );
    let daemon = Daemon::start(&db, &body).await;
    // The first rotation runs at start-up; its login test, as the account,
    // could only pass over TLS.
    let current = wait_for("the first rotation", Duration::from_secs(30), || async {
        let r = daemon.client().static_get("tls_billing").await.unwrap();
        (r.status == 200
            && r.body["version"].as_u64() >= Some(1)
            && r.body["rotation"]["in_progress"].is_null())
        .then_some(r.body)
    })
    .await;
    assert!(current["rotation"]["last_error"].is_null(), "{current}");
    let password = current["credential"]["password"].as_str().unwrap();
    assert_eq!(psql_verify_full(&db, &account, password, "SELECT current_user").unwrap(), account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_verify_identity_works_and_the_session_is_encrypted() {
    let db = MyDb::create_at(&mysql_tls_url(), "REQUIRE SSL").await;
    let (role, prefix) = unique_role("mtls");
    db.track_prefix(&prefix);
    let grant = format!("GRANT SELECT ON `{}`.items TO '{{{{name}}}}'@'%'", db.database);
    let body = format!(
        "{}\n{}",
        db.connection(
            "my",
            &format!("tls_mode = \"verify_identity\"\ntls_ca_file = {:?}", tls_file("ca.pem"))
        ),
        my_role(&role, "my", "10m", "1h", &[CREATE_USER, &grant])
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    let client = daemon.client();

    // The admin must use TLS (REQUIRE SSL), so a success is lessor's TLS.
    let issued = client.creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
    assert!(db.user_exists(&username).await);
    let log = wait_for("the start-up TLS line", Duration::from_secs(20), || async {
        let log = daemon.log();
        log.contains("admin connection").then_some(log)
    })
    .await;
    let line = log.lines().find(|l| l.contains("admin connection")).unwrap();
    // `Ssl_cipher` of lessor's own session, as the server reported it.
    assert!(line.contains("tls=\"TLSv1") && !line.contains("tls=off"), "{line}");
    assert!(line.contains("chain and host name verified"), "{line}");

    let renewed = client.renew(&lease_id, Some("20m")).await.unwrap();
    assert_eq!(renewed.status, 200, "{:?}", renewed.body);
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert!(revoked.status == 200 || revoked.status == 204, "{:?}", revoked.body);
    assert!(!db.user_exists(&username).await, "the user survived its revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_verify_ca_checks_the_chain_and_verify_identity_the_name() {
    let db = MyDb::create_at(&mysql_tls_url(), "REQUIRE SSL").await;
    let (ca_role, ca_prefix) = unique_role("mvca");
    db.track_prefix(&ca_prefix);
    let (id_role, id_prefix) = unique_role("mvid");
    db.track_prefix(&id_prefix);
    // 127.0.0.2 is the same server under a name its certificate lacks.
    let other_host = |section: String| section.replace(&format!("@{}:", db.host), "@127.0.0.2:");
    let ca = tls_file("ca.pem");
    let body = format!(
        "{}\n{}\n{}\n{}",
        other_host(db.connection("ca", &format!("tls_mode = \"verify_ca\"\ntls_ca_file = {ca:?}"))),
        my_role(&ca_role, "ca", "10m", "1h", &[CREATE_USER]),
        other_host(db.connection("id", &format!("tls_mode = \"verify_identity\"\ntls_ca_file = {ca:?}"))),
        my_role(&id_role, "id", "10m", "1h", &[CREATE_USER]),
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    let issued = daemon.client().creds(&ca_role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    assert!(db.user_exists(issued.body["credential"]["username"].as_str().unwrap()).await);

    let refused = daemon.client().creds(&id_role, None).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("name mismatch") && message.contains("127.0.0.2"), "{message}");
    assert!(db.users_with_prefix(&id_prefix).await.is_empty(), "a user was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_client_certificate_is_presented() {
    // REQUIRE X509: the server refuses the admin without a client
    // certificate signed by its CA (the test CA), password or not.
    let db = MyDb::create_at(&mysql_tls_url(), "REQUIRE X509").await;
    let (role, prefix) = unique_role("mx509");
    db.track_prefix(&prefix);
    let tls = format!(
        "tls_mode = \"verify_identity\"\ntls_ca_file = {:?}\ntls_client_cert_file = {:?}\ntls_client_key_file = {:?}",
        tls_file("ca.pem"),
        tls_file("client.pem"),
        tls_file("client.key")
    );
    let ca_only = format!("tls_mode = \"verify_identity\"\ntls_ca_file = {:?}", tls_file("ca.pem"));
    let (bare_role, bare_prefix) = unique_role("mnox509");
    db.track_prefix(&bare_prefix);
    let body = format!(
        "{}\n{}\n{}\n{}",
        db.connection("my", &tls),
        my_role(&role, "my", "10m", "1h", &[CREATE_USER]),
        db.connection("bare", &ca_only),
        my_role(&bare_role, "bare", "10m", "1h", &[CREATE_USER]),
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
    assert!(db.user_exists(issued.body["credential"]["username"].as_str().unwrap()).await);
    // The same admin without the certificate is refused by the server.
    let refused = daemon.client().creds(&bare_role, None).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    assert!(db.users_with_prefix(&bare_prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_preferred_falls_back_to_plaintext_and_required_refuses() {
    // The system MariaDB has no certificate (have_ssl DISABLED).
    let db = MyDb::create().await;
    let (pref_role, pref_prefix) = unique_role("mpref");
    db.track_prefix(&pref_prefix);
    let (req_role, req_prefix) = unique_role("mreq");
    db.track_prefix(&req_prefix);
    let body = format!(
        "{}\n{}\n{}\n{}",
        db.connection("pref", "tls_mode = \"preferred\""),
        my_role(&pref_role, "pref", "10m", "1h", &[CREATE_USER]),
        db.connection("req", "tls_mode = \"required\""),
        my_role(&req_role, "req", "10m", "1h", &[CREATE_USER]),
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    for _ in 0..2 {
        let issued = daemon.client().creds(&pref_role, None).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}\n{}", issued.body, daemon.log());
        let lease_id = issued.body["lease_id"].as_str().unwrap();
        // Revocation (lock, kill, drop) runs on the plaintext fallback too.
        let revoked = daemon.client().revoke(lease_id).await.unwrap();
        assert!(revoked.status == 200 || revoked.status == 204, "{:?}", revoked.body);
    }
    assert!(db.users_with_prefix(&pref_prefix).await.is_empty());
    assert_eq!(
        daemon.log().matches("the server offers no TLS; connecting in plaintext").count(),
        1,
        "logged once"
    );

    let refused = daemon.client().creds(&req_role, None).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("does not offer TLS") && message.contains("connection req"), "{message}");
    assert!(db.users_with_prefix(&req_prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_wrong_ca_fails_clearly() {
    let db = MyDb::create_at(&mysql_tls_url(), "").await;
    let (role, prefix) = unique_role("mtlsca");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}",
        db.connection(
            "my",
            &format!("tls_mode = \"verify_identity\"\ntls_ca_file = {:?}", tls_file("other-ca.pem"))
        ),
        my_role(&role, "my", "10m", "1h", &[CREATE_USER])
    );
    let daemon = Daemon::start_with_mysql(None, &db, &body, &[]).await;
    let issued = daemon.client().creds(&role, None).await.unwrap();
    assert_eq!(issued.status, 502, "{:?}", issued.body);
    let message = issued.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unknown issuer") && message.contains("connection my"), "{message}");
    assert!(db.users_with_prefix(&prefix).await.is_empty(), "a user was created");
}

#[test]
fn config_check_reports_unreadable_and_exposed_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    std::fs::copy(tls_dir().join("client.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = dir.path().join("lessor.toml");
    let check = |connection: &str| {
        std::fs::write(&config, format!("[server]\nsocket = \"/tmp/x.sock\"\n\n{connection}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_lessor"))
            .args(["config", "check"])
            .arg(&config)
            .output()
            .expect("run lessor config check");
        assert!(!out.status.success(), "config check passed: {connection}");
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };

    let said = check(
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://a@db.internal/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n",
    );
    assert!(said.contains("connections.pg.tls_ca_file") && said.contains("/nonexistent/ca.pem"), "{said}");

    let said = check(&format!(
        "[connections.my]\nplugin = \"mysql\"\nurl = \"mysql://a@db.internal:3306/\"\ntls_client_cert_file = {:?}\ntls_client_key_file = {:?}\n",
        tls_file("client.pem"),
        key.display().to_string()
    ));
    assert!(said.contains("connections.my.tls_client_key_file") && said.contains("chmod 600"), "{said}");

    let said = check(
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://a@db.internal/app?sslmode=allow\"\n",
    );
    assert!(said.contains("connections.pg.url") && said.contains("sslmode=allow"), "{said}");

    // Plaintext to another host passes, with the warning `serve` logs.
    std::fs::write(
        &config,
        "[server]\nsocket = \"/tmp/x.sock\"\n\n[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://a@db.internal/app?sslmode=disable\"\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_lessor")).args(["config", "check"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("connection pg") && stderr.contains("not loopback"),
        "{stderr}"
    );
}

fn mysql_tls_url() -> String {
    std::env::var("LESSOR_TEST_MYSQL_TLS_URL").expect(
        "LESSOR_TEST_MYSQL_TLS_URL is not set: run the TLS tests through scripts/test (or eval \"$(scripts/test --env)\")",
    )
}
