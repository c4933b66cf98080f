//! MySQL/MariaDB helpers: a throwaway admin user and database per test on
//! the server at `LESSOR_TEST_MYSQL_URL` (set by `scripts/test`; default
//! `mysql://root@127.0.0.1:3306/`), probes of `mysql.user`, and a daemon
//! whose config holds the admin password files of both backends.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use rand::distr::Alphanumeric;
use rand::Rng;

use super::{rand_suffix, Daemon, TestDb};

pub fn mysql_url() -> String {
    std::env::var("LESSOR_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".into())
}

/// The test server's superuser options. The driver would switch a loopback
/// TCP connection to the server's socket, where `root` may be another
/// account: that is turned off.
pub fn root_opts() -> OptsBuilder {
    root_opts_at(&mysql_url())
}

/// The superuser options of the server at `url`.
pub fn root_opts_at(url: &str) -> OptsBuilder {
    let opts = Opts::from_url(url).expect("the test server's URL parses");
    OptsBuilder::from_opts(opts).prefer_socket(false)
}

pub async fn mysql_root() -> Conn {
    mysql_root_at(&mysql_url()).await
}

pub async fn mysql_root_at(url: &str) -> Conn {
    Conn::new(root_opts_at(url))
        .await
        .unwrap_or_else(|e| panic!("connect to MySQL as the test superuser: {e}"))
}

/// A `LIKE … ESCAPE '!'` pattern for names starting with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut out: String = prefix
        .chars()
        .flat_map(|c| if matches!(c, '!' | '_' | '%') { vec!['!', c] } else { vec![c] })
        .collect();
    out.push('%');
    out
}

/// A throwaway admin user (with the privileges the README asks for) and
/// database, dropped with every user made under the tracked prefixes when
/// the value is dropped.
pub struct MyDb {
    pub admin: String,
    pub admin_password: String,
    pub database: String,
    pub host: String,
    pub port: u16,
    /// The superuser URL of the server the user and database are on.
    root_url: String,
    /// User-name prefixes whose users are dropped at the end.
    prefixes: std::sync::Mutex<Vec<String>>,
}

impl MyDb {
    pub async fn create() -> Self {
        Self::create_at(&mysql_url(), "").await
    }

    /// The same on the server at `root_url`; `require` is appended to the
    /// admin's `CREATE USER` (e.g. `REQUIRE SSL`).
    pub async fn create_at(root_url: &str, require: &str) -> Self {
        let suffix = rand_suffix(8);
        let admin = format!("lt_madmin_{suffix}");
        let database = format!("lt_mdb_{suffix}");
        let admin_password: String =
            rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let mut su = mysql_root_at(root_url).await;
        let version: String = su.query_first("SELECT VERSION()").await.unwrap().unwrap();
        let connection_admin =
            if version.contains("MariaDB") { "CONNECTION ADMIN" } else { "CONNECTION_ADMIN" };
        su.query_drop(format!(
            "CREATE USER '{admin}'@'%' IDENTIFIED BY '{admin_password}' {require};
             GRANT CREATE USER, PROCESS, {connection_admin} ON *.* TO '{admin}'@'%';
             GRANT SELECT ON mysql.* TO '{admin}'@'%';
             CREATE DATABASE `{database}`;
             GRANT SELECT, INSERT, UPDATE ON `{database}`.* TO '{admin}'@'%' WITH GRANT OPTION;
             CREATE TABLE `{database}`.items (n INT);
             INSERT INTO `{database}`.items VALUES (7);"
        ))
        .await
        .expect("create the MySQL admin user and database");
        let opts = Opts::from(root_opts_at(root_url));
        Self {
            admin,
            admin_password,
            database,
            host: opts.ip_or_hostname().to_string(),
            port: opts.tcp_port(),
            root_url: root_url.to_string(),
            prefixes: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The admin's URL, without a password (lessor reads it from a file).
    pub fn admin_url(&self) -> String {
        format!("mysql://{}@{}:{}/", self.admin, self.host, self.port)
    }

    /// Logs in as `user` into the test database.
    pub async fn login(&self, user: &str, password: &str) -> Result<Conn, mysql_async::Error> {
        let opts = root_opts_at(&self.root_url)
            .user(Some(user))
            .pass(Some(password))
            .db_name(Some(self.database.clone()));
        tokio::time::timeout(Duration::from_secs(10), Conn::new(opts)).await.expect("login timed out")
    }

    /// Remembers a user-name prefix whose users are dropped at the end.
    pub fn track_prefix(&self, prefix: &str) {
        self.prefixes.lock().unwrap().push(prefix.to_string());
    }

    /// Distinct user names starting with `prefix`, from `mysql.user`.
    pub async fn users_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        let mut su = mysql_root_at(&self.root_url).await;
        let users: Vec<String> = su
            .exec("SELECT DISTINCT User FROM mysql.user WHERE User LIKE ? ESCAPE '!'", (like_prefix(prefix),))
            .await
            .expect("query mysql.user");
        users.into_iter().collect()
    }

    pub async fn user_exists(&self, name: &str) -> bool {
        let mut su = mysql_root_at(&self.root_url).await;
        let hosts: Vec<String> =
            su.exec("SELECT Host FROM mysql.user WHERE User = ?", (name,)).await.unwrap();
        !hosts.is_empty()
    }

    /// Creates a user by hand, as a person (or an older tool) would.
    pub async fn create_user(&self, name: &str) {
        let mut su = mysql_root_at(&self.root_url).await;
        su.query_drop(format!("CREATE USER '{name}'@'%' IDENTIFIED BY 'x{}'", rand_suffix(12)))
            .await
            .unwrap();
    }

    /// `[connections.NAME]` for this server; `extra` is appended as is.
    pub fn connection(&self, name: &str, extra: &str) -> String {
        format!(
            "[connections.{name}]\nplugin = \"mysql\"\nurl = \"{}\"\npassword_file = \"MY_PASSWORD_FILE\"\nmax_connections = 12\n{extra}\n",
            self.admin_url()
        )
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let database = self.database.clone();
        let prefixes = self.prefixes.lock().unwrap().clone();
        let root_url = self.root_url.clone();
        // On a thread of its own: Drop cannot await, and this also runs
        // when a test panics.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut su = mysql_root_at(&root_url).await;
                let _ = su.query_drop(format!("DROP DATABASE IF EXISTS `{database}`")).await;
                let mut accounts: Vec<(String, String)> = Vec::new();
                for prefix in prefixes.iter().chain([&admin]) {
                    accounts.extend(
                        su.exec::<(String, String), _, _>(
                            "SELECT User, Host FROM mysql.user WHERE User LIKE ? ESCAPE '!'",
                            (like_prefix(prefix),),
                        )
                        .await
                        .unwrap_or_default(),
                    );
                }
                for (user, host) in accounts {
                    let _ = su.query_drop(format!("DROP USER IF EXISTS `{user}`@`{host}`")).await;
                }
                let _ = su.disconnect().await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A role section for a role named `role` on connection `connection`.
pub fn my_role(
    role: &str,
    connection: &str,
    default_ttl: &str,
    max_ttl: &str,
    statements: &[&str],
) -> String {
    let statements: Vec<String> = statements.iter().map(|s| format!("  {s:?},")).collect();
    format!(
        "[roles.{role}]\nconnection = \"{connection}\"\ndefault_ttl = \"{default_ttl}\"\nmax_ttl = \"{max_ttl}\"\ncreation_statements = [\n{}\n]\n",
        statements.join("\n")
    )
}

pub const CREATE_USER: &str = "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'";

impl Daemon {
    /// Starts the daemon with `body` (connections and roles) where
    /// `PASSWORD_FILE` is the PostgreSQL admin's password file (when `pg`
    /// is given) and `MY_PASSWORD_FILE` the MySQL admin's.
    pub async fn start_with_mysql(pg: Option<&TestDb>, my: &MyDb, body: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lessor.sock");
        let my_password_file = dir.path().join("mysql_admin.pw");
        super::write_private(&my_password_file, &format!("{}\n", my.admin_password));
        let mut body = body.replace("MY_PASSWORD_FILE", &my_password_file.display().to_string());
        if let Some(pg) = pg {
            let pg_password_file = dir.path().join("admin.pw");
            super::write_private(&pg_password_file, &format!("{}\n", pg.admin_password));
            body = body.replace("PASSWORD_FILE", &pg_password_file.display().to_string());
        }
        let config = format!(
            "[server]\nsocket = {socket:?}\nstore = \"sqlite://{}\"\nsocket_mode = \"0600\"\nrevoked_retention = \"1h\"\n\n{body}",
            dir.path().join("lessor.db").display(),
        );
        let config_path = dir.path().join("lessor.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("lessor.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut daemon = Self { dir, config_path, socket, log_path, child: None, env, wrapper: Vec::new() };
        daemon.spawn().await;
        daemon
    }
}
