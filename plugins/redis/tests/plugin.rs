//! The plugin against a real `redis-server` of each test's own (on a free
//! loopback port, no persistence, stopped when the test ends), with lessor's
//! admin an ACL user holding only the commands the plugin needs, and the
//! `default` user as the test's own view of the server.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lessor_plugin::{
    ConnectionContext, CreateRequest, Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};

#[path = "../../../tests/common/redis_server.rs"]
mod redis_server;
use redis_server::{random, Server};

/// The plugin on `server`, with `password` as its admin's.
fn plugin_on(server: &Server, password: &str) -> Arc<dyn Plugin> {
    plugin_at(&format!("redis://lessor_admin@127.0.0.1:{}", server.port), password, "")
        .expect("the plugin builds")
}

/// The plugin at `url` with the connection's own keys `options`.
fn plugin_at(
    url: &str,
    password: &str,
    options: &str,
) -> Result<Arc<dyn Plugin>, lessor_plugin::ConfigError> {
    let options: toml::Table = options.parse().unwrap();
    lessor_redis::factory(ConnectionContext {
        name: "cache",
        url: Some(url),
        password: Some(SecretString::from(password.to_string())),
        max_connections: 4,
        operation_timeout: Duration::from_secs(10),
        options: &options,
    })
}

fn role(plugin: &Arc<dyn Plugin>, rules: &str) -> RoleSettings {
    plugin
        .check_role("cache_ro", &format!("acl_rules = {rules}").parse().unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn lease<'a>(settings: Option<&'a RoleSettings>, username: &'a str) -> LeaseRef<'a> {
    LeaseRef { lease_id: "cache_ro/x", role: "cache_ro", settings, username, plugin_data: None }
}

async fn create(plugin: &Arc<dyn Plugin>, settings: &RoleSettings, username: &str) -> (String, String) {
    let password = SecretString::from(random(32));
    let request = CreateRequest {
        role: "cache_ro",
        settings,
        lease_id: "cache_ro/x",
        username,
        password: &password,
        expires_at: Utc::now() + chrono::Duration::hours(1),
    };
    match plugin.create(&request).await.expect("create").credential {
        Credential::Database { username, password } => (username, password.expose_secret().to_string()),
        other => panic!("not a database credential: {other:?}"),
    }
}

#[tokio::test]
async fn a_user_logs_in_with_its_rules_only_and_revocation_ends_it_and_its_sessions() {
    let server = Server::start().await;
    let plugin = plugin_on(&server, &server.admin_password);
    plugin.verify().await.expect("verify as the least-privileged admin");
    let settings = role(&plugin, r#"["~cache:*", "+@read", "+ping"]"#);
    let username = format!("v_cache_ro_{}", random(8).to_lowercase());
    let (user, password) = create(&plugin, &settings, &username).await;
    assert_eq!(user, username);

    // The login works, and the rules hold: reads of cache:* only, no writes.
    let mut session = server.login(&user, &password).await.expect("the issued user logs in");
    let value: Option<String> =
        redis::cmd("GET").arg("cache:a").query_async(&mut session).await.expect("a read");
    assert_eq!(value, None);
    let write: redis::RedisResult<()> =
        redis::cmd("SET").arg("cache:a").arg("1").query_async(&mut session).await;
    let refused = write.expect_err("a read role wrote");
    assert!(refused.to_string().to_lowercase().contains("no permissions"), "{refused}");
    let other: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("other:a").query_async(&mut session).await;
    let refused = other.expect_err("a key outside cache:* was read");
    assert!(refused.to_string().to_lowercase().contains("no permissions"), "{refused}");
    assert!(server.login(&user, "wrong-password").await.is_err(), "a wrong password logged in");
    assert_eq!(
        plugin.list_users("v_cache_ro_").await.unwrap().iter().map(|u| u.name.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&user)
    );

    plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
    assert!(!server.users().await.contains(&user), "the user is still in ACL USERS");
    assert!(server.login(&user, &password).await.is_err(), "the revoked user still logs in");
    let after: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut session).await;
    assert!(after.is_err(), "the revoked user's open session still answers");

    // Again, and for a user never made: done, and nothing is created.
    plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke again");
    plugin.revoke(&lease(None, "v_cache_ro_never")).await.expect("revoke of an unknown user");
    assert!(!server.users().await.iter().any(|u| u == "v_cache_ro_never" || *u == user));
    assert!(plugin.list_users("v_cache_ro_").await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_say_what_failed_and_never_carry_the_password() {
    let server = Server::start().await;
    let wrong = format!("wrong-{}", random(16));
    let refused = plugin_on(&server, &wrong).verify().await.unwrap_err();
    assert!(!refused.to_string().contains(&wrong), "{refused}");

    let plugin = plugin_on(&server, &server.admin_password);
    // A rule the server refuses (a category that does not exist): the
    // password of the command is not in the message.
    let settings = role(&plugin, r#"["+@nosuchcategory"]"#);
    let password = SecretString::from(format!("pw-{}", random(24)));
    let request = CreateRequest {
        role: "cache_ro",
        settings: &settings,
        lease_id: "cache_ro/y",
        username: "v_cache_ro_bad",
        password: &password,
        expires_at: Utc::now() + chrono::Duration::hours(1),
    };
    let e = plugin.create(&request).await.unwrap_err();
    assert!(matches!(e, PluginError::Rejected { .. }), "{e}");
    assert!(!e.to_string().contains(password.expose_secret()), "{e}");
    assert!(e.to_string().contains("ACL SETUSER"), "{e}");
    assert!(!server.users().await.iter().any(|u| u == "v_cache_ro_bad"), "a refused user was made");
}

/// On a server that keeps its users in an `aclfile`, every change is saved
/// to it (a restart keeps a revoked user gone), the password only as the
/// server's hash.
#[tokio::test]
async fn with_an_aclfile_every_change_is_saved_to_it() {
    let server = Server::start_with_aclfile().await;
    let file = server.aclfile.clone().expect("an aclfile");
    let plugin = plugin_on(&server, &server.admin_password);
    let settings = role(&plugin, r#"["~cache:*", "+@read"]"#);
    let username = format!("v_cache_ro_{}", random(8).to_lowercase());
    let (user, password) = create(&plugin, &settings, &username).await;
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains(&format!("user {user} ")), "the new user is not in the aclfile:\n{saved}");
    assert!(!saved.contains(&password), "the aclfile holds the password itself");

    plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(!saved.contains(&user), "the revoked user is still in the aclfile:\n{saved}");
}

/// `rediss://`: the plugin verifies the server's certificate against
/// `tls_ca_file` and its host name, and works over TLS; another CA or a
/// name the certificate lacks fails, with no password in the message.
#[tokio::test]
async fn over_tls_the_certificate_and_host_name_are_checked() {
    let server = Server::start_tls().await;
    let dir = redis_server::tls_dir();
    let ca = format!("tls_ca_file = {:?}", dir.join("ca.pem").display().to_string());
    let url = |host: &str| format!("rediss://lessor_admin@{host}:{}", server.port);
    let plugin = plugin_at(&url("127.0.0.1"), &server.admin_password, &ca).unwrap();
    plugin.verify().await.expect("verify over TLS");
    let settings = role(&plugin, r#"["~cache:*", "+@read", "+ping"]"#);
    let username = format!("v_cache_ro_{}", random(8).to_lowercase());
    let (user, password) = create(&plugin, &settings, &username).await;
    server.login(&user, &password).await.expect("the issued user logs in over TLS");
    plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
    assert!(!server.users().await.contains(&user));

    let other_ca = format!("tls_ca_file = {:?}", dir.join("other-ca.pem").display().to_string());
    let stranger = plugin_at(&url("127.0.0.1"), &server.admin_password, &other_ca).unwrap();
    let refused = stranger.verify().await.expect_err("a server the CA did not sign was trusted");
    assert!(!refused.to_string().contains(&server.admin_password), "{refused}");
    let wrong_name = plugin_at(&url("127.0.0.2"), &server.admin_password, &ca).unwrap();
    wrong_name.verify().await.expect_err("a host name the certificate lacks was accepted");

    // Settings that would not be checked are refused at load.
    let e = plugin_at(&format!("redis://lessor_admin@127.0.0.1:{}", server.port), "x", &ca).unwrap_err();
    assert!(e.to_string().contains("need a rediss:// URL"), "{e}");
    let e = plugin_at(&format!("{}#insecure", url("127.0.0.1")), "x", &ca).unwrap_err();
    assert!(e.to_string().contains("connections.cache.url"), "{e}");
}

/// A static account's passwords: `add_password` keeps the old one working
/// beside the new, `set_password` leaves the given one alone,
/// `remove_password` takes one away (and is done when it is not there);
/// none of them makes a user that does not exist.
#[tokio::test]
async fn a_static_users_passwords_are_added_tested_and_taken_away() {
    let server = Server::start().await;
    server
        .as_root(&["ACL", "SETUSER", "app_cache", "on", ">old-password-0000", "~*", "+@all"])
        .await
        .unwrap();
    let plugin = plugin_on(&server, &server.admin_password);
    let new = SecretString::from(format!("new-{}", random(24)));

    plugin.add_password("app_cache", &new).await.expect("add a password");
    plugin.test_login("app_cache", &new).await.expect("the added password logs in");
    plugin
        .test_login("app_cache", &SecretString::from("old-password-0000".to_string()))
        .await
        .expect("the old one too");
    let wrong =
        plugin.test_login("app_cache", &SecretString::from("wrong-password".to_string())).await.unwrap_err();
    assert!(!wrong.to_string().contains("wrong-password"), "{wrong}");

    plugin.set_password("app_cache", &new).await.expect("keep the new one alone");
    assert!(server.login("app_cache", "old-password-0000").await.is_err(), "the old password still logs in");
    plugin.test_login("app_cache", &new).await.expect("the kept password logs in");

    plugin.remove_password("app_cache", &new).await.expect("take it away");
    assert!(server.login("app_cache", new.expose_secret()).await.is_err(), "a removed password logs in");
    plugin.remove_password("app_cache", &new).await.expect("taking it away again is done");

    // A user that is not there: refused, and not made.
    let e = plugin.set_password("app_missing", &new).await.unwrap_err();
    assert!(e.to_string().contains("no such user") && !e.to_string().contains(new.expose_secret()), "{e}");
    plugin.add_password("app_missing", &new).await.unwrap_err();
    plugin.remove_password("app_missing", &new).await.expect("nothing to take away");
    assert!(!server.users().await.contains(&"app_missing".to_string()), "a missing user was made");
    assert_eq!(plugin.static_strategies(), ["single", "alternating", "dual_password"]);
}

/// `nodes = [...]`: every change is made on every node; a node that is
/// down or refuses fails the operation, naming it; the nodes are checked
/// at load.
#[tokio::test]
async fn every_change_is_made_on_every_node_or_fails_naming_the_node() {
    let first = Server::start().await;
    let second = first.another().await;
    let url = format!("redis://lessor_admin@127.0.0.1:{}", first.port);
    let nodes = format!("nodes = [\"redis://127.0.0.1:{}\"]", second.port);
    let plugin = plugin_at(&url, &first.admin_password, &nodes).unwrap();
    plugin.verify().await.expect("verify on both nodes");
    let settings = role(&plugin, r#"["~cache:*", "+@read", "+ping"]"#);
    let username = format!("v_cache_ro_{}", random(8).to_lowercase());
    let (user, password) = create(&plugin, &settings, &username).await;
    for node in [&first, &second] {
        node.login(&user, &password).await.expect("the user logs in on every node");
    }
    // A user on one node only is still listed for tidy.
    second.as_root(&["ACL", "SETUSER", "v_cache_ro_stray", "off"]).await.unwrap();
    let listed: Vec<String> =
        plugin.list_users("v_cache_ro_").await.unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(listed, {
        let mut both = vec![user.clone(), "v_cache_ro_stray".to_string()];
        both.sort();
        both
    });

    second.as_root(&["ACL", "SETUSER", "lessor_admin", "-acl|deluser"]).await.unwrap();
    let e = plugin.revoke(&lease(Some(&settings), &user)).await.unwrap_err();
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", second.port)), "{e}");
    assert!(second.users().await.contains(&user), "the refusing node lost the user");
    second.as_root(&["ACL", "SETUSER", "lessor_admin", "+acl|deluser"]).await.unwrap();
    plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke once every node takes it");
    for node in [&first, &second] {
        assert!(!node.users().await.contains(&user));
    }

    let port = second.port;
    drop(second);
    let e = plugin.verify().await.unwrap_err();
    assert!(
        matches!(e, PluginError::Unavailable { .. }) && e.to_string().contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );

    for (options, wanted) in [
        (format!("nodes = [\"rediss://127.0.0.1:{port}\"]"), "connections.cache.nodes[0]"),
        (format!("nodes = [\"redis://other@127.0.0.1:{port}\"]"), "another user than url"),
        (format!("nodes = [\"redis://:pw@127.0.0.1:{port}\"]"), "contains a password"),
        (format!("nodes = [\"redis://127.0.0.1:{}\"]", first.port), "listed twice"),
    ] {
        let e = plugin_at(&url, "x", &options).unwrap_err().to_string();
        assert!(e.contains(wanted), "{options}: {e}");
    }
}
