//! Secrets never reach the logs, even at trace level, and not through a
//! failed statement either.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_hold_no_password() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("secret");
    let (plain, plain_prefix) = unique_role("plain");
    let (broken, broken_prefix) = unique_role("broken");
    for p in [&prefix, &plain_prefix, &broken_prefix] {
        db.track_prefix(p);
    }
    let body = format!(
        "{conn}\n{scram}\n{broken_role}\n\
         [connections.pg_plain]\nplugin = \"postgres\"\nurl = \"{url}\"\npassword_file = \"PASSWORD_FILE\"\n\
         password_encoding = \"plaintext\"\n\n\
         [roles.{plain}]\nconnection = \"pg_plain\"\ncreation_statements = [{create:?}]\n",
        conn = pg_connection(&db, None),
        scram = pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        broken_role =
            pg_role(&broken, "1h", "2h", &[CREATE_ROLE, "GRANT SELECT ON no_such_table TO \"{{name}}\""]),
        url = db.admin_url(),
        create = CREATE_ROLE,
    );
    // More specific directives for the drivers' statement-level targets
    // must not turn their statement logging on either.
    let filter = "trace,tokio_postgres=trace,tokio_postgres::simple_query=trace,tokio_postgres::query=trace,\
                  postgres_protocol=trace,mysql_async=trace";
    let daemon = Daemon::start_with_env(&db, &body, &[("LESSOR_LOG", filter)]).await;

    let mut passwords = Vec::new();
    for r in [&role, &plain] {
        let issued = daemon.client().creds(r, None).await.unwrap();
        assert_eq!(issued.status, 200, "{:?}", issued.body);
        let username = issued.body["credential"]["username"].as_str().unwrap().to_string();
        let password = issued.body["credential"]["password"].as_str().unwrap().to_string();
        db.login(&username, &password).await.expect("login with the issued password");
        passwords.push(password);
        let id = issued.body["lease_id"].as_str().unwrap().to_string();
        assert_eq!(daemon.client().renew(&id, Some("10m")).await.unwrap().status, 200);
        assert_eq!(daemon.client().revoke(&id).await.unwrap().status, 200);
    }
    // A creation that fails after the statement carrying the password.
    let failed = daemon.client().creds(&broken, None).await.unwrap();
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    let message = failed.body.to_string();
    assert!(message.contains("no_such_table"), "{message}");
    assert!(!message.contains("PASSWORD '"), "the statement text leaked into the error: {message}");
    // Its rollback runs in the background: no role may be left.
    wait_for("the failed issuance's rollback", std::time::Duration::from_secs(20), || async {
        db.roles_with_prefix(&broken_prefix).await.is_empty().then_some(())
    })
    .await;

    let log = daemon.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "trace logging was not on");
    for password in &passwords {
        assert!(!log.contains(password.as_str()), "an issued password appears in the log");
    }
    assert!(!log.contains(&db.admin_password), "the admin password appears in the log");
    assert!(!log.contains("SCRAM-SHA-256$"), "a SCRAM verifier appears in the log");
    assert!(!log.contains("PASSWORD '"), "a statement with a password appears in the log");
}
