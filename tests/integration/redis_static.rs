//! Redis static accounts, `rotate-root` and several nodes through the
//! daemon, against `redis-server`s of the test's own: a `dual_password`
//! account is rotated on its one user while a client that keeps logging in
//! with the current password never fails; the admin's own password is
//! rotated without lessor losing its connection; a connection with
//! `nodes = [...]` changes every node or reports a failure (and revokes
//! again until every node took it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::redis_server::{login_at, Server};
use crate::common::*;
use crate::rotation::{credential, seal_key, settled, static_account};

const SETTLE: Duration = Duration::from_secs(60);

fn connection(server: &Server, nodes: &[&Server]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("\"redis://127.0.0.1:{}\"", n.port)).collect();
    format!(
        "[connections.cache]\nplugin = \"redis\"\nurl = \"redis://lessor_admin@127.0.0.1:{}\"\n\
         password_env = \"LESSOR_TEST_REDIS_ADMIN\"\nnodes = [{}]\n\n\
         [roles.cache_ro]\nconnection = \"cache\"\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n\
         acl_rules = [\"~cache:*\", \"+@read\", \"+ping\"]\n",
        server.port,
        nodes.join(", ")
    )
}

async fn start(db: &TestDb, server: &Server, body: &str) -> Daemon {
    Daemon::start_with_env(db, body, &[("LESSOR_TEST_REDIS_ADMIN", &server.admin_password)]).await
}

/// How many passwords `user` has on `server` (`ACL GETUSER`'s `passwords`).
async fn password_count(server: &Server, user: &str) -> usize {
    let got = server.as_root(&["ACL", "GETUSER", user]).await.unwrap();
    let redis::Value::Array(fields) = got else { panic!("ACL GETUSER {user}: {got:?}") };
    let at = fields
        .iter()
        .position(|f| matches!(f, redis::Value::BulkString(b) if b == b"passwords"))
        .expect("a passwords field");
    match &fields[at + 1] {
        redis::Value::Array(hashes) => hashes.len(),
        other => panic!("passwords: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_password_rotates_one_user_while_a_client_on_the_current_password_never_fails() {
    let server = Server::start().await;
    let initial = "initial-password-of-app-cache";
    server
        .as_root(&["ACL", "SETUSER", "app_cache", "on", &format!(">{initial}"), "~*", "+@all"])
        .await
        .unwrap();
    let db = TestDb::create().await;
    let (_key_dir, key) = seal_key();
    let body = format!(
        "seal_key_file = {key:?}\n\n{}\n{}",
        connection(&server, &[]),
        static_account("cache_app", "cache", "dual_password", &["app_cache"], "overlap = \"1h\"")
    );
    let daemon = start(&db, &server, &body).await;

    // The first rotation runs at start-up: the user now has lessor's
    // password beside the one it had, which keeps working for the overlap.
    let v1 = settled(&daemon, "cache_app", 1).await;
    let (user, pw1) = credential(&v1);
    assert_eq!(user, "app_cache");
    assert_eq!(v1["strategy"], "dual_password");
    assert_eq!(v1["previous_username"], "app_cache", "{v1}");
    server.login(&user, &pw1).await.expect("lessor's password logs in");
    server.login(&user, initial).await.expect("the password it had still logs in during the overlap");
    assert_eq!(password_count(&server, &user).await, 2);

    // A consumer that logs in with whatever lessor says is current, over
    // and over, through three rotations: not one login may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let newest = Arc::new(AtomicU64::new(0));
    let logins_at_newest = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (stop, failures, newest, logins_at_newest) =
            (stop.clone(), failures.clone(), newest.clone(), logins_at_newest.clone());
        let client = daemon.client();
        let port = server.port;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let got = client.static_get("cache_app").await.unwrap();
                let (user, password) = credential(&got.body);
                let version = got.body["version"].as_u64().unwrap();
                match login_at(port, false, &user, &password).await {
                    Ok(_) => {
                        if newest.fetch_max(version, Ordering::SeqCst) < version {
                            logins_at_newest.store(0, Ordering::SeqCst);
                        }
                        if newest.load(Ordering::SeqCst) == version {
                            logins_at_newest.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) => failures.lock().unwrap().push(format!("version {version}: {e}")),
                }
            }
        })
    };
    let mut previous = pw1.clone();
    for version in 2..=4u64 {
        // The consumer has moved to the newest password before the next
        // rotation, as a consumer that re-reads it does within the overlap.
        wait_for(&format!("the consumer to log in with version {}", version - 1), SETTLE, || async {
            let moved =
                newest.load(Ordering::SeqCst) == version - 1 && logins_at_newest.load(Ordering::SeqCst) >= 2;
            moved.then_some(())
        })
        .await;
        let rotated =
            daemon.client().static_rotate("cache_app", Some("scheduled drill"), None).await.unwrap();
        assert_eq!(rotated.status, 200, "{:?}", rotated.body);
        let now = settled(&daemon, "cache_app", version).await;
        let (_, current) = credential(&now);
        server.login(&user, &current).await.expect("the new password logs in");
        server.login(&user, &previous).await.expect("the previous password still logs in during the overlap");
        assert_eq!(password_count(&server, &user).await, 2, "one user holds current and previous only");
        previous = current;
    }
    wait_for("the consumer to log in with version 4", SETTLE, || async {
        (newest.load(Ordering::SeqCst) == 4).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new(), "a consumer on the current password failed");
    assert!(server.login(&user, initial).await.is_err(), "the password it had before lessor still logs in");
    assert!(server.login(&user, &pw1).await.is_err(), "a password two rotations old still logs in");

    // An emergency: no overlap, a reason, and every session of the user
    // ends (one user: the consumers reconnect with the new password).
    let session = server.login(&user, &previous).await.unwrap();
    let rotated =
        daemon.client().static_rotate("cache_app", Some("password in a pastebin"), Some("0s")).await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let v5 = settled(&daemon, "cache_app", 5).await;
    assert!(v5["previous_valid_until"].is_null(), "{v5}");
    let (_, pw5) = credential(&v5);
    server.login(&user, &pw5).await.expect("the emergency password logs in");
    assert!(server.login(&user, &previous).await.is_err(), "the leaked password still logs in");
    assert_eq!(password_count(&server, &user).await, 1);
    let mut session = session;
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut session).await;
    assert!(ping.is_err(), "a session of the leaked password still answers");
    assert!(daemon.log().contains("password in a pastebin"), "the reason is not in the log");
    for secret in [&pw1, &pw5] {
        assert!(!daemon.log().contains(secret.as_str()), "a password is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_root_on_redis_keeps_lessor_working_and_ends_the_old_admin_password() {
    let server = Server::start().await;
    let db = TestDb::create().await;
    let (_key_dir, key) = seal_key();
    let body = format!("seal_key_file = {key:?}\n\n{}", connection(&server, &[]));
    let mut daemon = start(&db, &server, &body).await;
    let rotated = daemon.client().rotate_root("cache").await.unwrap();
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    assert_eq!(rotated.body["username"], "lessor_admin", "{:?}", rotated.body);
    assert!(
        server.login("lessor_admin", &server.admin_password).await.is_err(),
        "the admin's old password still logs in"
    );
    assert_eq!(password_count(&server, "lessor_admin").await, 1);
    let issued = daemon.client().creds("cache_ro", None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let (user, password) = credential(&issued.body);
    server.login(&user, &password).await.expect("a user issued after rotate-root logs in");

    // After a restart lessor logs in with the stored password, not the
    // config's (which no longer works).
    daemon.stop();
    daemon.spawn().await;
    let revoked = daemon.client().revoke(issued.body["lease_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert!(!server.users().await.contains(&user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_every_change_and_a_node_that_refuses_fails_the_revocation_until_it_takes_it() {
    let first = Server::start().await;
    let second = first.another().await;
    let db = TestDb::create().await;
    let daemon = start(&db, &first, &connection(&first, &[&second])).await;
    let client = daemon.client();

    // Issued on both nodes; the login works on each.
    let issued = client.creds("cache_ro", None).await.unwrap();
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let (user, password) = credential(&issued.body);
    for node in [&first, &second] {
        node.login(&user, &password).await.expect("the user logs in on every node");
    }

    // The second node refuses deletions: the revocation fails (the user is
    // still there), and is retried until the node takes it.
    second.as_root(&["ACL", "SETUSER", "lessor_admin", "-acl|deluser"]).await.unwrap();
    let lease_id = issued.body["lease_id"].as_str().unwrap().to_string();
    let refused = client.revoke(&lease_id).await.unwrap();
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    let said = refused.body.to_string();
    assert!(
        said.contains(&format!("127.0.0.1:{}", second.port)),
        "the failure does not name the node: {said}"
    );
    assert!(second.users().await.contains(&user), "the refusing node lost the user");
    assert!(!first.users().await.contains(&user), "the first node kept the user");
    assert!(second.login(&user, &password).await.is_ok());
    second.as_root(&["ACL", "SETUSER", "lessor_admin", "+acl|deluser"]).await.unwrap();
    wait_for("the retried revocation to delete the user on the second node", SETTLE, || async {
        (!second.users().await.contains(&user)).then_some(())
    })
    .await;
    assert!(second.login(&user, &password).await.is_err(), "the revoked user logs in on the second node");

    // A node that is down fails the issuance, naming it.
    let port = second.port;
    drop(second);
    let failed = client.creds("cache_ro", None).await.unwrap();
    assert_eq!(failed.status, 502, "{:?}", failed.body);
    assert!(failed.body.to_string().contains(&format!("127.0.0.1:{port}")), "{:?}", failed.body);
}
