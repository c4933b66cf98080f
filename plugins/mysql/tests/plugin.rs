//! The plugin against a real MySQL or MariaDB at `LESSOR_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/`, an account that may create
//! users and grant everything).
//!
//! Each test makes its own admin user (with only the privileges the manual
//! asks for) and its own database, both with random names, and drops them
//! and every user it made afterwards even when the test panics (the body
//! runs in a task; cleanup runs before the panic is resumed). Assertions
//! look at the server's real state: `mysql.user`, logins, live sessions.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use lessor_plugin::{
    ConnectionContext, CreateRequest, Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

const CREATE_USER: &str = "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'";

fn random(len: usize) -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(len)
        .map(|b| (b as char).to_ascii_lowercase())
        .collect()
}

fn root_opts() -> OptsBuilder {
    let url =
        std::env::var("LESSOR_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".to_string());
    let opts = Opts::from_url(&url).expect("LESSOR_TEST_MYSQL_URL is not a MySQL URL");
    OptsBuilder::from_opts(opts).prefer_socket(false)
}

async fn root() -> Conn {
    Conn::new(root_opts()).await.expect("connect as the test's MySQL root")
}

/// A throwaway admin user and database, and the plugin built on them.
#[derive(Clone)]
struct Fixture {
    admin: String,
    admin_password: String,
    db: String,
    /// Every user a test creates starts with `v_{tag}_`, so cleanup finds them.
    tag: String,
    next: Arc<AtomicUsize>,
    plugin: Arc<dyn Plugin>,
    mariadb: bool,
}

impl Fixture {
    async fn setup(options: &str) -> Self {
        let tag = random(8);
        let admin = format!("lessor_t_admin_{tag}");
        let admin_password = random(24);
        let db = format!("lessor_t_db_{tag}");
        let mut su = root().await;
        let version: String = su.query_first("SELECT VERSION()").await.unwrap().unwrap();
        let mariadb = version.contains("MariaDB");
        let connection_admin = if mariadb { "CONNECTION ADMIN" } else { "CONNECTION_ADMIN" };
        su.query_drop(format!(
            "CREATE USER '{admin}'@'%' IDENTIFIED BY '{admin_password}';
             GRANT CREATE USER, PROCESS, {connection_admin} ON *.* TO '{admin}'@'%';
             GRANT SELECT ON mysql.* TO '{admin}'@'%';
             CREATE DATABASE `{db}`;
             GRANT ALL PRIVILEGES ON `{db}`.* TO '{admin}'@'%' WITH GRANT OPTION;
             CREATE TABLE `{db}`.items (n INT);
             INSERT INTO `{db}`.items VALUES (7);"
        ))
        .await
        .unwrap();
        let plugin = Self::plugin_for(&admin, &admin_password, options);
        Self { admin, admin_password, db, tag, next: Arc::new(AtomicUsize::new(0)), plugin, mariadb }
    }

    fn plugin_for(admin: &str, password: &str, options: &str) -> Arc<dyn Plugin> {
        let options: toml::Table = options.parse().unwrap();
        let root = Opts::from(root_opts());
        let url = format!("mysql://{admin}@{}:{}/", root.ip_or_hostname(), root.tcp_port());
        lessor_mysql::factory(ConnectionContext {
            name: "my_test",
            url: Some(&url),
            password: Some(SecretString::from(password.to_string())),
            max_connections: 4,
            operation_timeout: std::time::Duration::from_secs(30),
            options: &options,
        })
        .expect("build the plugin")
    }

    async fn cleanup(self) {
        let Self { admin, db, tag, plugin, .. } = self;
        drop(plugin);
        let mut su = root().await;
        su.query_drop(format!("DROP DATABASE IF EXISTS `{db}`")).await.unwrap();
        // MariaDB roles live in mysql.user too, with an empty host.
        let _ = su.query_drop(format!("DROP ROLE IF EXISTS v_{tag}_role")).await;
        let accounts: Vec<(String, String)> = su
            .exec(
                "SELECT User, Host FROM mysql.user WHERE User LIKE ? OR User = ?",
                (format!("%{tag}%"), &admin),
            )
            .await
            .unwrap();
        for (user, host) in accounts {
            su.query_drop(format!("DROP USER IF EXISTS '{user}'@'{host}'")).await.unwrap();
        }
    }

    fn username(&self) -> String {
        format!("v_{}_{}", self.tag, self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn role(&self, options: &str) -> RoleSettings {
        self.plugin.check_role("app", &options.parse().unwrap()).expect("role settings")
    }

    /// Hosts `user` exists with, in `mysql.user`.
    async fn hosts(&self, user: &str) -> Vec<String> {
        let mut su = root().await;
        su.exec("SELECT Host FROM mysql.user WHERE User = ? ORDER BY Host", (user,)).await.unwrap()
    }

    async fn user_exists(&self, user: &str) -> bool {
        !self.hosts(user).await.is_empty()
    }

    async fn login(&self, user: &str, password: &str) -> Result<Conn, mysql_async::Error> {
        let opts = root_opts().user(Some(user)).pass(Some(password)).db_name(Some(self.db.clone()));
        Conn::new(opts).await
    }

    async fn create(
        &self,
        settings: &RoleSettings,
        username: &str,
        password: &SecretString,
        expires_at: DateTime<Utc>,
    ) -> Result<lessor_plugin::Created, PluginError> {
        self.plugin
            .create(&CreateRequest {
                role: "app",
                settings,
                lease_id: &format!("app/{username}"),
                username,
                password,
                expires_at,
            })
            .await
    }

    fn grant_items(&self) -> String {
        format!("GRANT SELECT ON `{}`.items TO '{{{{name}}}}'@'%'", self.db)
    }
}

fn lease<'a>(settings: Option<&'a RoleSettings>, username: &'a str) -> LeaseRef<'a> {
    LeaseRef { lease_id: "app/x", role: "app", settings, username, plugin_data: None }
}

/// Runs `body` against a fresh fixture and always cleans up.
async fn with_fixture<F, Fut>(options: &str, body: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let fixture = Fixture::setup(options).await;
    let result = tokio::spawn(body(fixture.clone())).await;
    fixture.cleanup().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn in_one_hour() -> DateTime<Utc> {
    Utc::now() + TimeDelta::hours(1)
}

fn password() -> SecretString {
    lessor_plugin::names::password(32)
}

#[tokio::test]
async fn verify_needs_create_user_and_a_reachable_server() {
    with_fixture("", |fx| async move {
        fx.plugin.verify().await.expect("an admin with CREATE USER verifies");

        let weak = format!("lessor_t_weak_{}", fx.tag);
        let mut su = root().await;
        su.query_drop(format!("CREATE USER '{weak}'@'%' IDENTIFIED BY '{}'", fx.admin_password))
            .await
            .unwrap();
        let plugin = Fixture::plugin_for(&weak, &fx.admin_password, "");
        let err = plugin.verify().await.unwrap_err();
        assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}");
        assert!(err.to_string().contains("CREATE USER"), "{err}");

        // A wrong admin password: refused, and not echoed.
        let plugin = Fixture::plugin_for(&fx.admin, "not-the-admin-password", "");
        let err = plugin.verify().await.unwrap_err();
        assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}");
        assert!(!err.to_string().contains("not-the-admin-password"), "{err}");

        // Nothing listens on port 1.
        let options = toml::Table::new();
        let plugin = lessor_mysql::factory(ConnectionContext {
            name: "nowhere",
            url: Some("mysql://nobody@127.0.0.1:1/"),
            password: Some(SecretString::from(fx.admin_password.clone())),
            max_connections: 1,
            operation_timeout: std::time::Duration::from_secs(30),
            options: &options,
        })
        .unwrap();
        let err = plugin.verify().await.unwrap_err();
        assert!(matches!(err, PluginError::Unavailable { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains(&fx.admin_password), "{err}");
    })
    .await;
}

#[tokio::test]
async fn create_login_renew_revoke_lifecycle() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_USER:?}, {:?}]", fx.grant_items()));
        let user = fx.username();
        let pw = password();

        let created = fx.create(&settings, &user, &pw, in_one_hour()).await.expect("create");
        match &created.credential {
            Credential::Database { username, password } => {
                assert_eq!(username, &user);
                assert_eq!(password.expose_secret(), pw.expose_secret());
            }
            other => panic!("unexpected credential {other:?}"),
        }
        assert_eq!(fx.hosts(&user).await, ["%"]);

        // The user logs in with the password, and only with it.
        let mut session = fx.login(&user, pw.expose_secret()).await.expect("login as the new user");
        let n: Option<i32> = session.query_first("SELECT n FROM items").await.unwrap();
        assert_eq!(n, Some(7));
        assert!(fx.login(&user, "certainly-not-the-password").await.is_err(), "a wrong password got in");

        // Renew only moves the lease: it succeeds while the user exists.
        fx.plugin.renew(&lease(Some(&settings), &user), in_one_hour()).await.expect("renew");

        // Revoke drops the user and kills its open connection.
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
        assert!(!fx.user_exists(&user).await, "user still exists after revoke");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if session.query_drop("SELECT 1").await.is_err() {
                break;
            }
            assert!(Instant::now() < deadline, "the user's session survived revocation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(fx.login(&user, pw.expose_secret()).await.is_err(), "login works after revoke");

        // Idempotent, with or without the role's settings.
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("second revoke");
        fx.plugin.revoke(&lease(None, &user)).await.expect("revoke without settings");

        // Renewing a user that is gone is refused.
        let err = fx.plugin.renew(&lease(Some(&settings), &user), in_one_hour()).await.unwrap_err();
        assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn default_revocation_drops_every_host() {
    with_fixture("", |fx| async move {
        let localhost = "CREATE USER '{{name}}'@'localhost' IDENTIFIED BY '{{password}}'";
        let settings = fx.role(&format!("creation_statements = [{CREATE_USER:?}, {localhost:?}]"));
        let user = fx.username();
        fx.create(&settings, &user, &password(), in_one_hour()).await.expect("create");
        assert_eq!(fx.hosts(&user).await, ["%", "localhost"]);
        fx.plugin.revoke(&lease(None, &user)).await.expect("revoke");
        assert!(!fx.user_exists(&user).await, "a host entry survived: {:?}", fx.hosts(&user).await);
    })
    .await;
}

#[tokio::test]
async fn failed_creation_leaves_no_user_and_no_secret_in_the_error() {
    with_fixture("", |fx| async move {
        let cases = [
            // The table does not exist: the backend refuses.
            ("GRANT SELECT ON no_such_db_x.no_such_table TO '{{name}}'@'%'", "rejected"),
            // The server quotes the unknown column back: the password.
            ("SELECT {{password}} FROM DUAL", "rejected"),
            // A typo in the role's own statements is the role's fault.
            ("GRANTT SELECT ON *.* TO '{{name}}'@'%'", "invalid_role"),
        ];
        for (second, class) in cases {
            let settings = fx.role(&format!("creation_statements = [{CREATE_USER:?}, {second:?}]"));
            let user = fx.username();
            let pw = password();
            let err = fx.create(&settings, &user, &pw, in_one_hour()).await.unwrap_err();
            let message = format!("{err} {err:?}");
            assert!(!message.contains(pw.expose_secret()), "password leaked: {message}");
            assert!(!message.contains("IDENTIFIED BY"), "statement text leaked: {message}");
            assert!(message.contains(&user), "the error names the username: {message}");
            assert!(message.contains("creation statement 2 of 2"), "{message}");
            match class {
                "rejected" => assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}"),
                _ => assert!(matches!(err, PluginError::InvalidRole { .. }), "{err:?}"),
            }
            if second.contains("{{password}}") {
                assert!(message.contains("[redacted]"), "{message}");
            }
            assert!(!fx.user_exists(&user).await, "a failed creation left user {user}");
            // The broker revokes regardless: that must succeed on a user that never was.
            fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke after failure");
        }

        // Custom rollback statements replace the default drop.
        let marker = format!("`{}`.rolled_back", fx.db);
        let settings = fx.role(&format!(
            "creation_statements = [{CREATE_USER:?}, {:?}]\nrollback_statements = [{:?}, {:?}]",
            "GRANT SELECT ON no_such_db_x.t TO '{{name}}'@'%'",
            format!("CREATE TABLE {marker} (who VARCHAR(64)) SELECT '{{{{name}}}}' AS who"),
            "DROP USER IF EXISTS '{{name}}'@'%'",
        ));
        let user = fx.username();
        fx.create(&settings, &user, &password(), in_one_hour()).await.unwrap_err();
        assert!(!fx.user_exists(&user).await);
        let mut su = root().await;
        let who: Option<String> = su.query_first(format!("SELECT who FROM {marker}")).await.unwrap();
        assert_eq!(who.as_deref(), Some(user.as_str()), "the custom rollback did not run");
    })
    .await;
}

#[tokio::test]
async fn custom_revocation_statements_are_idempotent() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!(
            "creation_statements = [{CREATE_USER:?}, {:?}]\nrevocation_statements = [{:?}, {:?}]",
            fx.grant_items(),
            format!("REVOKE SELECT ON `{}`.items FROM '{{{{name}}}}'@'%'", fx.db),
            "DROP USER '{{name}}'@'%'",
        ));
        let user = fx.username();
        fx.create(&settings, &user, &password(), in_one_hour()).await.expect("create");
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
        assert!(!fx.user_exists(&user).await);
        // The grant and the user are gone: both statements now fail with
        // "no such grant" / "unknown user", which count as success.
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("second revoke");
    })
    .await;
}

#[tokio::test]
async fn list_users_finds_exactly_the_prefix() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_USER:?}]"));
        let prefix = format!("v_{}_", fx.tag);
        let a = fx.username();
        let b = fx.username();
        for user in [&a, &b] {
            fx.create(&settings, user, &password(), in_one_hour()).await.expect("create");
        }
        let mut su = root().await;
        // `_` is a LIKE wildcard: this one would match an unescaped pattern.
        let lookalike = format!("vX{}X", fx.tag);
        su.query_drop(format!("CREATE USER '{lookalike}'@'%'")).await.unwrap();
        // The same user on two hosts is listed once.
        su.query_drop(format!("CREATE USER '{a}'@'localhost'")).await.unwrap();
        if fx.mariadb {
            // Roles are not users.
            su.query_drop(format!("CREATE ROLE {prefix}role")).await.unwrap();
        }

        let mut users = fx.plugin.list_users(&prefix).await.expect("list users");
        users.sort_by(|x, y| x.name.cmp(&y.name));
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, [a.as_str(), b.as_str()]);
        for user in &users {
            let created = user.created_at.expect("MariaDB and MySQL 8 keep password_last_changed");
            let age = Utc::now() - created;
            assert!(age >= TimeDelta::seconds(-2) && age < TimeDelta::minutes(1), "{user:?} is {age} old");
        }

        // The admin itself is never listed, whatever the prefix.
        let admins = fx.plugin.list_users("lessor_t_admin_").await.unwrap();
        assert!(admins.iter().all(|u| u.name != fx.admin), "{admins:?}");

        // A stray user dropped the way tidy does it: revoke without settings.
        fx.plugin.revoke(&lease(None, &a)).await.expect("drop a stray user");
        let names: Vec<String> =
            fx.plugin.list_users(&prefix).await.unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, std::slice::from_ref(&b));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_with_grants_all_succeed() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_USER:?}, {:?}]", fx.grant_items()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let fx = fx.clone();
            let settings = settings.clone();
            tasks.push(tokio::spawn(async move {
                let mut made = Vec::new();
                for _ in 0..5 {
                    let user = fx.username();
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match fx.create(&settings, &user, &password(), in_one_hour()).await {
                            Ok(_) => break,
                            Err(e) if e.is_transient_conflict() && attempt < 8 => {}
                            Err(e) => panic!("create {user}: {e}"),
                        }
                    }
                    made.push(user);
                }
                made
            }));
        }
        let mut users = Vec::new();
        for task in tasks {
            users.extend(task.await.unwrap());
        }
        assert_eq!(users.len(), 40);
        let listed = fx.plugin.list_users(&format!("v_{}_", fx.tag)).await.unwrap();
        assert_eq!(listed.len(), 40);
        for user in &users {
            fx.plugin.revoke(&lease(None, user)).await.expect("revoke");
        }
        assert!(fx.plugin.list_users(&format!("v_{}_", fx.tag)).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn native_password_hash_keeps_the_plaintext_off_the_server() {
    with_fixture("password_encoding = \"mysql_native_password\"", |fx| async move {
        let create = if fx.mariadb {
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'"
        } else {
            "CREATE USER '{{name}}'@'%' IDENTIFIED WITH mysql_native_password AS '{{password}}'"
        };
        let settings = fx.role(&format!("creation_statements = [{create:?}, {:?}]", fx.grant_items()));
        let user = fx.username();
        let pw = password();
        fx.create(&settings, &user, &pw, in_one_hour()).await.expect("create");

        let mut session = fx.login(&user, pw.expose_secret()).await.expect("login with the password");
        let n: Option<i32> = session.query_first("SELECT n FROM items").await.unwrap();
        assert_eq!(n, Some(7));
        assert!(fx.login(&user, "certainly-not-the-password").await.is_err(), "a wrong password got in");
        if fx.mariadb {
            let mut su = root().await;
            let (stored, expected): (String, String) = su
                .exec_first(
                    "SELECT authentication_string, PASSWORD(?) FROM mysql.user WHERE User = ?",
                    (pw.expose_secret(), &user),
                )
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored, expected, "the server holds the hash of the issued password");
        }

        // The plaintext form would store the hash as the password: refused at load.
        let options: toml::Table = format!("creation_statements = [{CREATE_USER:?}]").parse().unwrap();
        let err = fx.plugin.check_role("app", &options).unwrap_err();
        assert!(err.message.contains("IDENTIFIED BY PASSWORD"), "{err}");
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
    })
    .await;
}
