//! The Redis plugin through the daemon, against a `redis-server` of the
//! test's own (`tests/common/redis_server.rs`): a credential issued by
//! `lessor creds` logs in with exactly its role's rules, revocation and
//! expiry delete the ACL user and end its session, and tidy drops a user
//! under the prefix that no lease covers.

use std::time::Duration;

use crate::common::redis_server::Server;
use crate::common::*;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn config(server: &Server) -> String {
    format!(
        "[connections.cache]\nplugin = \"redis\"\nurl = \"redis://lessor_admin@127.0.0.1:{}\"\n\
         password_env = \"LESSOR_TEST_REDIS_ADMIN\"\ntidy = true\ntidy_prefix = \"v_cache\"\ntidy_grace = \"0s\"\n\n\
         [roles.cache_ro]\nconnection = \"cache\"\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n\
         acl_rules = [\"~cache:*\", \"+@read\", \"+ping\"]\n",
        server.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_users_are_issued_with_their_rules_revoked_expired_and_tidied() {
    let server = Server::start().await;
    let db = TestDb::create().await;
    let daemon =
        Daemon::start_with_env(&db, &config(&server), &[("LESSOR_TEST_REDIS_ADMIN", &server.admin_password)])
            .await;
    let client = daemon.client();

    // Issued through the CLI: the user logs in, reads cache:*, cannot write.
    let out = std::process::Command::new(LESSOR)
        .args(["creds", "cache_ro", "--format", "json"])
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lease_id = issued["lease_id"].as_str().unwrap().to_string();
    let user = issued["credential"]["username"].as_str().unwrap().to_string();
    let password = issued["credential"]["password"].as_str().unwrap().to_string();
    assert!(user.starts_with("v_cache_ro_"), "{user}");
    let mut session = server.login(&user, &password).await.expect("the issued user logs in");
    let _: Option<String> = redis::cmd("GET").arg("cache:k").query_async(&mut session).await.expect("a read");
    let write: redis::RedisResult<()> =
        redis::cmd("SET").arg("cache:k").arg("v").query_async(&mut session).await;
    assert!(write.is_err(), "a read-only user wrote");

    // Revoked: gone from the server, its open session ended, no login.
    let revoked = client.revoke(&lease_id).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!server.users().await.contains(&user), "the revoked user is still in ACL USERS");
    let after: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut session).await;
    assert!(after.is_err(), "the revoked user's session still answers");
    assert!(server.login(&user, &password).await.is_err(), "the revoked user logs in");

    // Expired: a 2 s lease's user is deleted without being asked.
    let short = client.creds("cache_ro", Some("2s")).await.unwrap();
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    assert!(server.users().await.contains(&short_user));
    wait_for("the expired user to be deleted", Duration::from_secs(30), || async {
        (!server.users().await.contains(&short_user)).then_some(())
    })
    .await;

    // Tidy: a user under the prefix that no lease covers is dropped; a
    // live lease's user and users outside the prefix stay.
    let live = client.creds("cache_ro", None).await.unwrap();
    let live_user = live.body["credential"]["username"].as_str().unwrap().to_string();
    let mut root = server.root().await.unwrap();
    for stray in ["v_cache_stray", "app_keep"] {
        let _: String = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(stray)
            .arg("on")
            .arg(">x-stray-password-000")
            .query_async(&mut root)
            .await
            .unwrap();
    }
    let swept = client.tidy(Some("cache"), false).await.unwrap();
    assert_eq!(swept.status, 200, "{:?}", swept.body);
    assert_eq!(
        swept.body["connections"][0]["dropped"],
        serde_json::json!(["v_cache_stray"]),
        "{:?}",
        swept.body
    );
    let users = server.users().await;
    assert!(
        !users.contains(&"v_cache_stray".to_string())
            && users.contains(&live_user)
            && users.contains(&"app_keep".to_string()),
        "{users:?}"
    );
}

/// kill -9 of the daemon during bursts of Redis issuances leaves no ACL
/// user that no active lease covers (nor a lease without its user), after
/// each restart's recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_redis_issuance_leaves_no_orphan_user() {
    let server = Server::start().await;
    let db = TestDb::create().await;
    let config = config(&server).replacen("tidy = true\n", &format!("tidy = true\n{SHORT_OPERATIONS}"), 1);
    let mut daemon =
        Daemon::start_with_env(&db, &config, &[("LESSOR_TEST_REDIS_ADMIN", &server.admin_password)]).await;
    kill_9_during_bursts(&mut daemon, "cache_ro", 3, || async {
        server.users().await.into_iter().filter(|u| u.starts_with("v_cache_ro_")).collect()
    })
    .await;
}
