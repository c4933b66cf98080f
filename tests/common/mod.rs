//! Shared helpers for the integration tests: a throwaway admin role and
//! database per test, the real daemon binary on a temporary socket, a TCP
//! proxy to simulate a backend outage, and probes of the backend's state.
//!
//! Tests read `LESSOR_TEST_PG_URL` (set by `scripts/test` to a cluster with
//! password authentication); the default is the local trust-auth server,
//! which cannot prove that a password works or stopped working.

#![allow(dead_code)]

pub mod aws;
pub mod moto;
pub mod mysql;
pub mod rabbitmq;
pub mod redis_server;
pub mod slapd;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor::client::Client;
use rand::distr::Alphanumeric;
use rand::Rng;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

pub fn pg_url() -> String {
    std::env::var("LESSOR_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A short random lowercase suffix for names.
pub fn rand_suffix(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(|c| (c as char).to_ascii_lowercase()).collect()
}

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
    tokio::spawn(connection);
    client
}

/// Host and port of the test cluster.
pub fn pg_host_port() -> (String, u16) {
    let config: tokio_postgres::Config = pg_url().parse().expect("LESSOR_TEST_PG_URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// A throwaway admin role and database, dropped with every role made under
/// them when the value is dropped.
pub struct TestDb {
    pub admin: String,
    pub admin_password: String,
    pub database: String,
    pub host: String,
    pub port: u16,
    /// A superuser connection to the test database.
    pub su: tokio_postgres::Client,
    /// Role-name prefixes whose roles are dropped at the end.
    prefixes: Mutex<Vec<String>>,
}

impl TestDb {
    pub async fn create() -> Self {
        let suffix = rand_suffix(8);
        let admin = format!("lt_admin_{suffix}");
        let database = format!("lt_db_{suffix}");
        let admin_password: String =
            rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let su = connect(&pg_url()).await;
        su.batch_execute(&format!(
            "CREATE ROLE {admin} WITH LOGIN CREATEROLE PASSWORD '{admin_password}'; \
             GRANT pg_signal_backend TO {admin};"
        ))
        .await
        .expect("create admin role");
        su.batch_execute(&format!("CREATE DATABASE {database} OWNER {admin}"))
            .await
            .expect("create database");
        let (host, port) = pg_host_port();
        let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
        config.dbname(&database);
        let (db_su, connection) = config.connect(NoTls).await.expect("connect to test database");
        tokio::spawn(connection);
        Self { admin, admin_password, database, host, port, su: db_su, prefixes: Mutex::new(Vec::new()) }
    }

    /// The admin's URL, without a password (lessor reads it from a file).
    pub fn admin_url(&self) -> String {
        format!("postgres://{}@{}:{}/{}", self.admin, self.host, self.port, self.database)
    }

    /// Connects as `user` with `password` to the test database.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config.host(&self.host).port(self.port).user(user).password(password).dbname(&self.database);
        config.connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Remembers a role-name prefix whose roles are dropped at the end.
    pub fn track_prefix(&self, prefix: &str) {
        self.prefixes.lock().unwrap().push(prefix.to_string());
    }

    /// Role names starting with `prefix`.
    pub async fn roles_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        let rows = self
            .su
            .query("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", &[&prefix])
            .await
            .expect("query pg_roles");
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    }

    /// What PostgreSQL stores as `name`'s password (a verifier, as a rule).
    pub async fn stored_password(&self, name: &str) -> String {
        self.su
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&name])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn role_exists(&self, name: &str) -> bool {
        self.su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.unwrap().is_some()
    }

    /// `rolvaliduntil` of a role, as an RFC 3339 string.
    pub async fn valid_until(&self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let row = self
            .su
            .query_one("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .ok()?;
        row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(0)
    }
}

/// Asserts that `user`'s `VALID UNTIL` on the server is the lease's
/// `expires_at` of an answer (to the second): a renewal reached the backend.
pub async fn assert_valid_until_is(db: &TestDb, user: &str, answer: &Value) {
    let expires: chrono::DateTime<chrono::Utc> =
        answer["expires_at"].as_str().unwrap_or_else(|| panic!("no expires_at in {answer}")).parse().unwrap();
    let until = db.valid_until(user).await.unwrap_or_else(|| panic!("{user} has no VALID UNTIL"));
    assert!(
        (until - expires).num_seconds().abs() <= 1,
        "{user}: VALID UNTIL {until}, the lease ends {expires}"
    );
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = pg_url();
        let admin = self.admin.clone();
        let database = self.database.clone();
        let prefixes = self.prefixes.lock().unwrap().clone();
        // Clean up on a thread of its own: Drop cannot await, and this also
        // runs when a test panics.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let su = connect(&url).await;
                let _ = su
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&database],
                    )
                    .await;
                let _ = su.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
                for prefix in prefixes {
                    let rows = su
                        .query("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", &[&prefix])
                        .await
                        .unwrap_or_default();
                    for row in rows {
                        let name: String = row.get(0);
                        let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\"")).await;
                    }
                }
                let _ = su.batch_execute(&format!("DROP ROLE IF EXISTS {admin}")).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The real `lessor` binary serving a temporary socket and store.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// A command the binary runs under (`lessor serve …` its last
    /// arguments): a stand-in service manager, say.
    pub wrapper: Vec<String>,
}

impl Daemon {
    /// Writes a config with `[server]` pointing into a temp folder, the
    /// admin password file, and `body` (connections and roles; the
    /// placeholder `PASSWORD_FILE` is replaced by the file's path), then
    /// starts the daemon and waits until it answers.
    pub async fn start(db: &TestDb, body: &str) -> Self {
        Self::start_with_env(db, body, &[]).await
    }

    pub async fn start_with_env(db: &TestDb, body: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on_store(db, None, body, env).await
    }

    /// [`start_with_env`](Self::start_with_env) with `store` (the lines
    /// that name the store, e.g. `store = "postgres://…"` and its password
    /// file) instead of a SQLite file in the temp folder.
    pub async fn start_on_store(db: &TestDb, store: Option<&str>, body: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lessor.sock");
        let password_file = dir.path().join("admin.pw");
        write_private(&password_file, &format!("{}\n", db.admin_password));
        let store = match store {
            Some(store) => store.replace("PASSWORD_FILE", &password_file.display().to_string()),
            None => format!("store = \"sqlite://{}\"", dir.path().join("lessor.db").display()),
        };
        let config = format!(
            "[server]\nsocket = {socket:?}\n{store}\nsocket_mode = \"0600\"\nrevoked_retention = \"1h\"\n\n{}",
            body.replace("PASSWORD_FILE", &password_file.display().to_string()),
        );
        let config_path = dir.path().join("lessor.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("lessor.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut daemon = Self { dir, config_path, socket, log_path, child: None, env, wrapper: Vec::new() };
        daemon.spawn().await;
        daemon
    }

    /// Writes the config as [`start_on_store`](Self::start_on_store) does
    /// and returns the daemon unstarted, for a test that sets `wrapper`
    /// (which may name files in `dir`) before [`spawn`](Self::spawn).
    pub fn prepare(db: &TestDb, body: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lessor.sock");
        let password_file = dir.path().join("admin.pw");
        write_private(&password_file, &format!("{}\n", db.admin_password));
        let config = format!(
            "[server]\nsocket = {socket:?}\nstore = \"sqlite://{}\"\nsocket_mode = \"0600\"\nrevoked_retention = \"1h\"\n\n{}",
            dir.path().join("lessor.db").display(),
            body.replace("PASSWORD_FILE", &password_file.display().to_string())
                .replace("DAEMON_DIR", &dir.path().display().to_string()),
        );
        let config_path = dir.path().join("lessor.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("lessor.log");
        Self { dir, config_path, socket, log_path, child: None, env: Vec::new(), wrapper: Vec::new() }
    }

    /// Sets variables of the daemon's environment for its next start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }

    /// Starts (or restarts) the binary and waits for `ready`.
    pub async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_lessor"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_lessor")),
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("LESSOR_SOCKET")
            .env("LESSOR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("start lessor"));
        let client = self.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if matches!(client.health().await, Ok(r) if r.status == 200) {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!("lessor is not ready (exit status {exited:?}); its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running daemon.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the daemon runs");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGTERM and wait (a daemon a test left stopped is continued, so
    /// the SIGTERM takes effect).
    pub fn stop(&mut self) {
        if !self.wrapper.is_empty() {
            // A wrapper is told by SIGKILL (`unshare` ignores SIGTERM while
            // it waits); it passes the end on to the daemon itself.
            self.kill9();
            return;
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending signals to our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
                libc::kill(child.id() as i32, libc::SIGCONT);
            }
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Lets every local user reach the socket (its directory 0755, the
    /// socket 0666), for clients run as another uid.
    pub fn open_to_all_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    }

    /// `program` run as nobody (uid and gid 65534), pointed at this
    /// daemon's socket, with no stdin. Call [`open_to_all_users`](Self::open_to_all_users) first.
    pub fn as_nobody(&self, program: &str) -> Command {
        self.as_user(65534, 65534, program)
    }

    /// `program` run as `uid`:`gid` with no supplementary groups, pointed
    /// at this daemon's socket, with no stdin.
    pub fn as_user(&self, uid: u32, gid: u32, program: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        command.env("LESSOR_SOCKET", &self.socket).uid(uid).gid(gid).stdin(Stdio::null());
        command
    }

    /// One metric of the daemon's, summed over its labels (a counter that
    /// nothing has moved yet is not rendered at all: 0).
    pub async fn metric(&self, name: &str) -> f64 {
        let response = self.client().request(hyper::Method::GET, "/v1/metrics", None).await.expect("metrics");
        let text = response.body.as_str().unwrap_or_default().to_string();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                (series.split('{').next() == Some(name)).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    /// Every lease the daemon lists (all states but revoked), every page.
    pub async fn leases(&self) -> Vec<Value> {
        let response = self.client().lease_list_all(None).await.expect("list leases");
        assert_eq!(response.status, 200, "{:?}", response.body);
        response.body["leases"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until no lease is pending or revoking, then returns the
    /// usernames of the active ones.
    pub async fn settled_active_usernames(&self) -> BTreeSet<String> {
        wait_for("leases to settle", Duration::from_secs(60), || async {
            let leases = self.leases().await;
            let unsettled = leases.iter().any(|l| l["state"] != "active" && l["state"] != "irrevocable");
            (!unsettled).then(|| {
                leases
                    .iter()
                    .filter(|l| l["state"] == "active")
                    .map(|l| l["username"].as_str().unwrap().to_string())
                    .collect()
            })
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills the daemon with SIGKILL at a random moment of a burst of
/// issuances of `role`, `rounds` times; after each restart, the backend's
/// users (as `backend_users` lists them) must be exactly the active leases'.
/// Fails if no issuance ever succeeded, so the test cannot pass vacuously.
pub async fn kill_9_during_bursts<F, Fut>(daemon: &mut Daemon, role: &str, rounds: usize, backend_users: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = BTreeSet<String>>,
{
    use rand::Rng;
    for round in 0..rounds {
        let mut burst = Vec::new();
        for _ in 0..12 {
            let client = daemon.client();
            let role = role.to_string();
            burst.push(tokio::spawn(async move {
                // Keep asking until the daemon dies under us.
                while let Ok(r) = client.creds(&role, None).await {
                    assert!(r.status == 200 || r.status >= 500, "{:?}", r.body);
                }
            }));
        }
        let wait = rand::rng().random_range(50..1000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill9();
        for task in burst {
            task.await.unwrap();
        }
        daemon.spawn().await;
        let active = daemon.settled_active_usernames().await;
        let users = backend_users().await;
        let orphans: Vec<_> = users.difference(&active).collect();
        assert!(orphans.is_empty(), "round {round}: backend users without an active lease: {orphans:?}");
        let missing: Vec<_> = active.difference(&users).collect();
        assert!(missing.is_empty(), "round {round}: active leases without a backend user: {missing:?}");
    }
    assert!(!backend_users().await.is_empty(), "no issuance ever succeeded: {}", daemon.log());
}

/// A TCP proxy in front of a backend that can be cut (connections closed,
/// new ones refused, as a dead server) or turned into a black hole
/// (connections accepted and kept, nothing answered, as a partition or a
/// stalled server), and restored, to simulate an outage of one backend
/// without stopping the shared server.
pub struct Proxy {
    pub port: u16,
    state: Arc<tokio::sync::watch::Sender<Link>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    Cut,
    BlackHole,
}

impl Proxy {
    pub async fn start(target: (String, u16)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(tokio::sync::watch::Sender::new(Link::Up));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let state = state.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else { return };
                    let link = *state.borrow();
                    let task = match link {
                        Link::Cut => {
                            drop(inbound); // refused, as a dead server would
                            continue;
                        }
                        // Accepted, then silence until the outage ends.
                        Link::BlackHole => tokio::spawn(async move {
                            let _held = inbound;
                            std::future::pending::<()>().await
                        }),
                        Link::Up => {
                            let target = target.clone();
                            let link = state.subscribe();
                            tokio::spawn(async move {
                                if let Ok(outbound) = TcpStream::connect((target.0.as_str(), target.1)).await
                                {
                                    forward(inbound, outbound, link).await;
                                }
                            })
                        }
                    };
                    connections.lock().unwrap().push(task);
                }
            }
        });
        Self { port, state, connections, accept }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.send_replace(Link::Cut);
        self.close_all();
    }

    /// Stops answering: open connections carry nothing more either way
    /// (and stay open), new ones are accepted and never answered.
    pub fn black_hole(&self) {
        self.state.send_replace(Link::BlackHole);
    }

    /// Ends an outage. After a black hole, the connections it held are
    /// closed (as a peer's reset would after a long partition), never
    /// resumed: nothing sent into the hole reaches the backend late.
    pub fn restore(&self) {
        if self.state.send_replace(Link::Up) == Link::BlackHole {
            self.close_all();
        }
    }

    fn close_all(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// Copies both ways until either side ends; once the link is no longer
/// up, nothing read is passed on (the connection stays open, silent).
async fn forward(inbound: TcpStream, outbound: TcpStream, link: tokio::sync::watch::Receiver<Link>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut link: tokio::sync::watch::Receiver<Link>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if *link.borrow_and_update() != Link::Up {
                // Swallowed; wait for the proxy to close this connection.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = pump(in_read, out_write, link.clone()) => {}
        _ = pump(out_read, in_write, link) => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_all();
    }
}

/// A `[[policies]]` entry: `matches` is the inside of its `match` table
/// (e.g. `user = "nobody"`).
pub fn policy(name: &str, matches: &str, allow: &[&str], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "\n[[policies]]\nname = {name:?}\nmatch = {{ {matches} }}\nallow = [{}]\n{extra}\n",
        allow.join(", ")
    )
}

/// A role config section for a role named `role` on connection `pg`.
pub fn pg_role(role: &str, default_ttl: &str, max_ttl: &str, statements: &[&str]) -> String {
    let statements: Vec<String> = statements.iter().map(|s| format!("  {s:?},")).collect();
    format!(
        "[roles.{role}]\nconnection = \"pg\"\ndefault_ttl = \"{default_ttl}\"\nmax_ttl = \"{max_ttl}\"\ncreation_statements = [\n{}\n]\n",
        statements.join("\n")
    )
}

/// The `[connections.pg]` section for the test database (or a proxy port).
pub fn pg_connection(db: &TestDb, port: Option<u16>) -> String {
    format!(
        "[connections.pg]\nplugin = \"postgres\"\nurl = \"postgres://{}@{}:{}/{}\"\npassword_file = \"PASSWORD_FILE\"\nmax_connections = 12\n",
        db.admin,
        db.host,
        port.unwrap_or(db.port),
        db.database
    )
}

/// A connection setting for the kill -9 tests: a crashed run's pending
/// leases are rolled back at start-up and looked at once more an operation
/// timeout later (its statements may still commit on the server), so a
/// short timeout keeps each round short.
pub const SHORT_OPERATIONS: &str = "operation_timeout = \"2s\"\n";

pub const CREATE_ROLE: &str =
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'";

/// A unique role name for a test, and the username prefix of its leases.
pub fn unique_role(base: &str) -> (String, String) {
    let role = format!("{base}_{}", rand_suffix(6));
    let prefix = format!("v_{role}_");
    (role, prefix)
}

/// The SHA-256 of a file in hex, as `sha256sum` prints it (what
/// `[plugins.NAME] sha256` pins).
pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// Writes a password file as lessor wants it: mode 0600 (a file group or
/// others can read is refused at load).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A PostgreSQL cluster of its own (trust auth on loopback), for a test that
/// stops and restarts its store without touching the shared test cluster.
/// Made with the test cluster's `initdb`/`pg_ctl` (`LESSOR_TEST_PG_CTL`),
/// run as the `postgres` user; removed when dropped.
pub struct StoreCluster {
    pub port: u16,
    data: PathBuf,
    pg_ctl: PathBuf,
}

impl StoreCluster {
    pub fn create() -> Self {
        let pg_ctl = PathBuf::from(
            std::env::var("LESSOR_TEST_PG_CTL").expect("LESSOR_TEST_PG_CTL (scripts/test sets it)"),
        );
        let initdb = pg_ctl.with_file_name("initdb");
        let data = PathBuf::from(format!("/var/tmp/lessor-store-{}", rand_suffix(8).to_lowercase()));
        std::fs::create_dir_all(&data).unwrap();
        let chown = Command::new("chown").arg("postgres:postgres").arg(&data).status().unwrap();
        assert!(chown.success(), "chown the store cluster's folder to postgres");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&initdb)
            .arg("-D")
            .arg(data.join("pg"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self { port, data, pg_ctl };
        cluster.start();
        cluster
    }

    /// The store URL (trust auth: no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&self.pg_ctl)
            .arg("-D")
            .arg(self.data.join("pg"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.display()
        );
        let log = self.data.join("log").display().to_string();
        self.pg_ctl(&["-w", "-l", &log, "-o", &options, "start"]);
    }

    /// Stops the cluster at once (`-m fast`: sessions are cut).
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url()).await
    }
}

impl Drop for StoreCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&self.pg_ctl)
            .arg("-D")
            .arg(self.data.join("pg"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
