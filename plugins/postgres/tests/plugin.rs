//! The plugin against a real PostgreSQL at `LESSOR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a superuser).
//!
//! Each test makes its own CREATEROLE (not superuser) admin and its own
//! database, both with random names, and drops them afterwards even when
//! the test panics (the body runs in a task; cleanup runs before the panic
//! is resumed). Assertions look at the server's real state: `pg_roles`,
//! `pg_authid`, logins, live sessions.
//!
//! Every test runs twice: against the plugin in process, and against it
//! out of process, served by `lessor plugin serve postgres` and reached
//! through the broker's own client of the plugin protocol, so the two
//! paths cannot drift.
//!
//! On a server that trusts every login, a login proves nothing about the
//! password; the tests detect that (a wrong password gets in) and then only
//! check that logging in works.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use lessor_plugin::{
    ConnectionContext, CreateRequest, Credential, LeaseRef, Plugin, PluginError, RoleSettings,
};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

const CREATE_ROLE: &str =
    r#"CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"#;

fn random(len: usize) -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(len)
        .map(|b| (b as char).to_ascii_lowercase())
        .collect()
}

fn superuser_config() -> Config {
    let url = std::env::var("LESSOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    Config::from_str(&url).expect("LESSOR_TEST_PG_URL is not a PostgreSQL URL")
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Where the plugin under test runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    InProcess,
    OutOfProcess,
}

/// The `lessor` binary, built with the workspace: the test binary is in
/// `target/<profile>/deps`, `lessor` one folder up.
fn lessor_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("lessor");
    assert!(path.exists(), "{} is missing: build it first (cargo build -p lessor)", path.display());
    path
}

/// The plugin for `context`, in process or as an external plugin.
fn build(mode: Mode, context: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, lessor_plugin::ConfigError> {
    match mode {
        Mode::InProcess => lessor_postgres::factory(context),
        Mode::OutOfProcess => {
            use sha2::Digest;
            let command = lessor_binary();
            let config = lessor::config::PluginConfig {
                sha256: hex::encode(sha2::Sha256::digest(std::fs::read(&command).unwrap())),
                command,
                args: ["plugin", "serve", "postgres"].map(String::from).to_vec(),
                env: Default::default(),
                user: None,
                group: None,
                log_level: "info".into(),
                start_timeout: lessor::config::Duration::from_secs(60),
            };
            let host = lessor::external::Host::start("pg_ext", &config).expect("the plugin starts");
            Ok(Arc::new(lessor::external::Remote::configure(Arc::new(host), context)?))
        }
    }
}

/// A throwaway admin role and database, and the plugin built on them.
#[derive(Clone)]
struct Fixture {
    superuser: Config,
    admin: String,
    admin_password: String,
    db: String,
    /// Every role a test creates starts with `v_{tag}_`, so cleanup finds them.
    tag: String,
    next: Arc<AtomicUsize>,
    plugin: Arc<dyn Plugin>,
    mode: Mode,
}

impl Fixture {
    async fn setup(options: &str, mode: Mode) -> Self {
        let superuser = superuser_config();
        let tag = random(8);
        let admin = format!("lessor_t_admin_{tag}");
        let admin_password = random(24);
        let db = format!("lessor_t_db_{tag}");
        let su = connect(&superuser).await.expect("connect as the test superuser");
        su.batch_execute(&format!(
            "CREATE ROLE \"{admin}\" WITH CREATEROLE LOGIN PASSWORD '{admin_password}';
             GRANT pg_signal_backend TO \"{admin}\";"
        ))
        .await
        .unwrap();
        su.batch_execute(&format!("CREATE DATABASE \"{db}\" OWNER \"{admin}\"")).await.unwrap();

        let options: toml::Table = options.parse().unwrap();
        let url = url_for(&superuser, &admin, &db);
        let plugin = build(
            mode,
            ConnectionContext {
                name: "pg_test",
                url: Some(&url),
                password: Some(SecretString::from(admin_password.clone())),
                max_connections: 4,
                operation_timeout: std::time::Duration::from_secs(30),
                options: &options,
            },
        )
        .expect("build the plugin");
        Self { superuser, admin, admin_password, db, tag, next: Arc::new(AtomicUsize::new(0)), plugin, mode }
    }

    async fn cleanup(self) {
        let Self { superuser, admin, db, tag, plugin, .. } = self;
        drop(plugin);
        let su = connect(&superuser).await.expect("connect for cleanup");
        su.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await.unwrap();
        let rows = su
            .query(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
                &[&format!("v_{tag}_")],
            )
            .await
            .unwrap();
        for row in rows {
            let name: String = row.get(0);
            su.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\"")).await.unwrap();
        }
        su.batch_execute(&format!(
            "DROP ROLE IF EXISTS \"{admin}\"; DROP ROLE IF EXISTS \"lessor_t_weak_{tag}\""
        ))
        .await
        .unwrap();
    }

    fn username(&self) -> String {
        format!("v_{}_{}", self.tag, self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn role(&self, options: &str) -> RoleSettings {
        self.plugin.check_role("app", &options.parse().unwrap()).expect("role settings")
    }

    /// A superuser session in the test database.
    async fn superuser_in_db(&self) -> Client {
        let mut config = self.superuser.clone();
        config.dbname(&self.db);
        connect(&config).await.unwrap()
    }

    async fn login(&self, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
        let mut config = self.superuser.clone();
        config.user(user).password(password).dbname(&self.db);
        connect(&config).await
    }

    /// Whether the server checks passwords (a wrong one is refused).
    async fn checks_passwords(&self, user: &str) -> bool {
        self.login(user, "certainly-not-the-password").await.is_err()
    }

    async fn valid_until(&self, user: &str) -> Option<Option<DateTime<Utc>>> {
        let su = connect(&self.superuser).await.unwrap();
        su.query_opt("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", &[&user])
            .await
            .unwrap()
            .map(|row| row.get(0))
    }

    async fn role_exists(&self, user: &str) -> bool {
        self.valid_until(user).await.is_some()
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
}

fn lease<'a>(settings: Option<&'a RoleSettings>, username: &'a str) -> LeaseRef<'a> {
    LeaseRef { lease_id: "app/x", role: "app", settings, username, plugin_data: None }
}

/// The admin's URL on the same server as the superuser's, without a password.
fn url_for(superuser: &Config, user: &str, db: &str) -> String {
    let port = superuser.get_ports().first().copied().unwrap_or(5432);
    let host = match superuser.get_hosts().first() {
        Some(Host::Tcp(h)) if h.contains(':') => format!("[{h}]"),
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(path)) => path.display().to_string().replace('/', "%2F"),
        None => "127.0.0.1".to_string(),
    };
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Runs `body` against a fresh fixture, once with the plugin in process
/// and once out of process, and always cleans up.
async fn with_fixture<F, Fut>(options: &str, body: F)
where
    F: Fn(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    for mode in [Mode::InProcess, Mode::OutOfProcess] {
        let fixture = Fixture::setup(options, mode).await;
        let result = tokio::spawn(body(fixture.clone())).await;
        fixture.cleanup().await;
        if let Err(e) = result {
            eprintln!("failed with the plugin {mode:?}");
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn in_one_hour() -> DateTime<Utc> {
    (Utc::now() + TimeDelta::hours(1)).duration_trunc(TimeDelta::seconds(1)).unwrap()
}

fn password() -> SecretString {
    lessor_plugin::names::password(32)
}

#[tokio::test]
async fn verify_needs_createrole_and_a_reachable_server() {
    with_fixture("", |fx| async move {
        fx.plugin.verify().await.expect("a CREATEROLE admin verifies");

        let su = connect(&fx.superuser).await.unwrap();
        let weak = format!("lessor_t_weak_{}", fx.tag);
        su.batch_execute(&format!("CREATE ROLE \"{weak}\" LOGIN PASSWORD '{}'", fx.admin_password))
            .await
            .unwrap();
        let plugin = build(
            fx.mode,
            ConnectionContext {
                name: "weak",
                url: Some(&url_for(&fx.superuser, &weak, &fx.db)),
                password: Some(SecretString::from(fx.admin_password.clone())),
                max_connections: 1,
                operation_timeout: std::time::Duration::from_secs(30),
                options: &toml::Table::new(),
            },
        )
        .unwrap();
        let err = plugin.verify().await.unwrap_err();
        assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}");
        assert!(err.to_string().contains("CREATEROLE"), "{err}");

        // Nothing listens on port 1.
        let plugin = build(
            fx.mode,
            ConnectionContext {
                name: "nowhere",
                url: Some("postgres://nobody@127.0.0.1:1/postgres"),
                password: Some(SecretString::from(fx.admin_password.clone())),
                max_connections: 1,
                operation_timeout: std::time::Duration::from_secs(30),
                options: &toml::Table::new(),
            },
        )
        .unwrap();
        let err = plugin.verify().await.unwrap_err();
        assert!(matches!(err, PluginError::Unavailable { .. }), "{err:?}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains(&fx.admin_password), "{err}");
    })
    .await;
}

#[tokio::test]
async fn create_renew_revoke_lifecycle() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}]"));
        let user = fx.username();
        let pw = password();
        let expires = in_one_hour();

        let created = fx.create(&settings, &user, &pw, expires).await.expect("create");
        match &created.credential {
            Credential::Database { username, password } => {
                assert_eq!(username, &user);
                assert_eq!(password.expose_secret(), pw.expose_secret());
            }
            other => panic!("unexpected credential {other:?}"),
        }
        assert_eq!(fx.valid_until(&user).await, Some(Some(expires)), "VALID UNTIL is the lease's end");

        // The server got a SCRAM verifier, not the password.
        let su = connect(&fx.superuser).await.unwrap();
        let stored: Option<String> = su
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&user])
            .await
            .unwrap()
            .get(0);
        let stored = stored.expect("a password is set");
        assert!(stored.starts_with("SCRAM-SHA-256$"), "stored password is not a SCRAM verifier");

        // The login works with the password the broker handed out.
        let session = fx.login(&user, pw.expose_secret()).await.expect("login as the new role");
        let me: String = session.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(me, user);
        // The test cluster (`scripts/test`) authenticates by password, so
        // the login above proves the verifier matches; a server that trusts
        // every login proves nothing and is refused here rather than
        // passing silently.
        assert!(
            fx.checks_passwords(&user).await,
            "a wrong password logs in: LESSOR_TEST_PG_URL must name a server with password authentication \
             (scripts/test sets one up)"
        );

        // Renew moves VALID UNTIL.
        let later = expires + TimeDelta::hours(5);
        fx.plugin.renew(&lease(Some(&settings), &user), later).await.expect("renew");
        assert_eq!(fx.valid_until(&user).await, Some(Some(later)));

        // Revoke drops the role and ends its live session.
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
        assert!(!fx.role_exists(&user).await, "role still exists after revoke");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if session.simple_query("SELECT 1").await.is_err() {
                break;
            }
            assert!(Instant::now() < deadline, "the role's session survived revocation");
            tokio::task::yield_now().await;
        }

        // Idempotent, with or without the role's settings.
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("second revoke");
        fx.plugin.revoke(&lease(None, &user)).await.expect("revoke without settings");

        // Renewing a role that is gone is refused.
        let err = fx.plugin.renew(&lease(Some(&settings), &user), later).await.unwrap_err();
        assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn plaintext_encoding_sends_the_password() {
    with_fixture("password_encoding = \"plaintext\"", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}]"));
        let user = fx.username();
        let pw = password();
        fx.create(&settings, &user, &pw, in_one_hour()).await.expect("create");
        let session = fx.login(&user, pw.expose_secret()).await.expect("login with the password");
        drop(session);
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
        assert!(!fx.role_exists(&user).await);
    })
    .await;
}

#[tokio::test]
async fn failed_creation_leaves_no_role_and_no_secret_in_the_error() {
    for options in ["", "password_encoding = \"plaintext\""] {
        with_fixture(options, |fx| async move {
            let cases = [
                // Fails on a missing table: the backend refuses.
                (r#"GRANT SELECT ON no_such_table TO "{{name}}""#, "rejected"),
                // The server quotes the literal back: with the password or verifier in it.
                (r#"SELECT '{{password}}'::int"#, "rejected"),
                // A typo in the role's own statements is the role's fault.
                (r#"GRANTT SELECT ON no_such_table TO "{{name}}""#, "invalid_role"),
            ];
            for (second, class) in cases {
                let third = r#"COMMENT ON ROLE "{{name}}" IS 'made'"#;
                let settings =
                    fx.role(&format!("creation_statements = [{CREATE_ROLE:?}, {second:?}, {third:?}]"));
                let user = fx.username();
                let pw = password();
                let err = fx.create(&settings, &user, &pw, in_one_hour()).await.unwrap_err();
                let message = format!("{err} {err:?}");
                assert!(!message.contains(pw.expose_secret()), "password leaked: {message}");
                assert!(!message.contains("SCRAM-SHA-256$"), "verifier leaked: {message}");
                assert!(!message.contains("GRANT SELECT"), "statement text leaked: {message}");
                assert!(message.contains(&user), "the error names the username: {message}");
                // The statement that failed, not a later one of the same
                // round trip that failed because the transaction had.
                assert!(message.contains("creation statement 2 of 3"), "{message}");
                match class {
                    "rejected" => assert!(matches!(err, PluginError::Rejected { .. }), "{err:?}"),
                    _ => assert!(matches!(err, PluginError::InvalidRole { .. }), "{err:?}"),
                }
                if second.contains("::int") {
                    assert!(message.contains("[redacted]"), "{message}");
                }
                assert!(!fx.role_exists(&user).await, "a failed creation left role {user}");
                // The broker revokes regardless: that must succeed on a role that never was.
                fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke after failure");
            }
            // The pool's connections came back out of the failed
            // transactions: the next creation commits.
            let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}]"));
            let user = fx.username();
            fx.create(&settings, &user, &password(), in_one_hour())
                .await
                .expect("a creation after the failures");
            assert!(fx.role_exists(&user).await, "role {user} was not committed");
        })
        .await;
    }
}

#[tokio::test]
async fn default_revocation_takes_over_owned_objects() {
    with_fixture("", |fx| async move {
        let grant = r#"GRANT CREATE ON SCHEMA public TO "{{name}}""#;
        let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}, {grant:?}]"));
        let user = fx.username();
        let pw = password();
        fx.create(&settings, &user, &pw, in_one_hour()).await.expect("create");
        let session = fx.login(&user, pw.expose_secret()).await.unwrap();
        session.batch_execute(&format!("CREATE TABLE owned_{user} (id int)")).await.unwrap();

        // No settings: the role was removed from the config; the default recipe runs.
        // The CREATEROLE admin is not a member of the role, so REASSIGN OWNED
        // needs the GRANT-and-retry path.
        fx.plugin.revoke(&lease(None, &user)).await.expect("revoke");
        assert!(!fx.role_exists(&user).await);
        let su = fx.superuser_in_db().await;
        let owner: String = su
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE tablename = $1",
                &[&format!("owned_{user}")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, fx.admin, "owned objects go to the admin");
        fx.plugin.revoke(&lease(None, &user)).await.expect("second revoke");
    })
    .await;
}

#[tokio::test]
async fn custom_revocation_statements_are_idempotent() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!(
            "creation_statements = [{CREATE_ROLE:?}]\nrevocation_statements = [{:?}, {:?}]",
            r#"ALTER ROLE "{{name}}" NOLOGIN"#, r#"DROP ROLE "{{name}}""#
        ));
        let user = fx.username();
        fx.create(&settings, &user, &password(), in_one_hour()).await.expect("create");
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("revoke");
        assert!(!fx.role_exists(&user).await);
        fx.plugin.revoke(&lease(Some(&settings), &user)).await.expect("second revoke");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grants_on_one_table_fail_only_transiently() {
    with_fixture("", |fx| async move {
        let su = fx.superuser_in_db().await;
        su.batch_execute(&format!("CREATE TABLE t (id int); ALTER TABLE t OWNER TO \"{}\"", fx.admin))
            .await
            .unwrap();
        let grant = r#"GRANT SELECT ON t TO "{{name}}""#;
        let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}, {grant:?}]"));

        let mut tasks = Vec::new();
        for _ in 0..8 {
            let fx = fx.clone();
            let settings = settings.clone();
            tasks.push(tokio::spawn(async move {
                let mut transient = 0;
                for _ in 0..50 {
                    // The broker retries a transient conflict with a new name.
                    let user = fx.username();
                    match fx.create(&settings, &user, &password(), in_one_hour()).await {
                        Ok(_) => return (user, transient),
                        Err(err) => {
                            assert!(err.is_transient_conflict(), "non-transient error: {err:?}");
                            assert!(!fx.role_exists(&user).await, "a failed creation left {user}");
                            transient += 1;
                        }
                    }
                }
                panic!("create kept failing transiently");
            }));
        }
        let mut users = Vec::new();
        let mut transient = 0;
        for task in tasks {
            let (user, t) = task.await.unwrap();
            users.push(user);
            transient += t;
        }
        eprintln!("{} creates succeeded after {transient} transient failures", users.len());
        for user in &users {
            let ok: bool =
                su.query_one("SELECT has_table_privilege($1, 't', 'SELECT')", &[user]).await.unwrap().get(0);
            assert!(ok, "{user} lacks SELECT on t");
        }
        for user in &users {
            fx.plugin.revoke(&lease(Some(&settings), user)).await.expect("revoke");
            assert!(!fx.role_exists(user).await);
        }
    })
    .await;
}

#[tokio::test]
async fn list_users_finds_login_roles_under_the_prefix() {
    with_fixture("", |fx| async move {
        let settings = fx.role(&format!("creation_statements = [{CREATE_ROLE:?}]"));
        let prefix = format!("v_{}_", fx.tag);
        let a = fx.username();
        let b = fx.username();
        for user in [&a, &b] {
            fx.create(&settings, user, &password(), in_one_hour()).await.expect("create");
        }
        let su = connect(&fx.superuser).await.unwrap();
        // `_` is a LIKE wildcard: this one would match an unescaped pattern.
        let lookalike = format!("vX{}X1", fx.tag);
        // A group role under the prefix, with a member: not a credential.
        let group = format!("{prefix}group");
        su.batch_execute(&format!(
            "CREATE ROLE \"{lookalike}\"; CREATE ROLE \"{group}\" NOLOGIN; GRANT \"{group}\" TO \"{b}\""
        ))
        .await
        .unwrap();

        let users = fx.plugin.list_users(&prefix).await.expect("list users");
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, [a.as_str(), b.as_str()]);
        assert!(users.iter().all(|u| u.created_at.is_none()), "PostgreSQL keeps no creation time");
        let admins = fx.plugin.list_users("lessor_t_admin_").await.unwrap();
        assert!(admins.iter().all(|u| u.name != fx.admin), "the admin itself was listed: {admins:?}");

        // Dropped the way tidy does it: revoke without settings.
        fx.plugin.revoke(&lease(None, &a)).await.expect("drop a stray role");
        let names: Vec<String> =
            fx.plugin.list_users(&prefix).await.unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, std::slice::from_ref(&b));
        su.batch_execute(&format!("DROP ROLE \"{lookalike}\"; DROP ROLE \"{group}\"")).await.unwrap();
    })
    .await;
}
