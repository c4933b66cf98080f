//! `--nodes N`: the in-process daemons the lessor lines run against.
//!
//! Node `i` (1 to N) is `lessor::daemon::start` with `node_id =
//! "bench-<i>"` and its own temp folder (socket, SQLite store, audit log),
//! all on the bench's tokio runtime and one shutdown token. N > 1 needs
//! `--store postgres`, so every node keeps its leases in the same
//! PostgreSQL store: each revokes its own leases when they fall due. N = 1
//! is the same shape with one node.
//!
//! The load tasks are spread over the nodes round-robin ([`pick`]). The
//! daemons share the process's one metrics recorder (`lessor::metrics::
//! install` returns the same handle to every later call), so a scrape of
//! any node reports the counters and histograms of all of them.
//!
//! Here too: [`lessor_config`], the config every PostgreSQL phase runs
//! lessor with (phase `scale` writes it to a file for `lessor serve`),
//! built from [`connection_table`] and [`role_table`], which phase
//! `external` uses for its own connection and roles; and [`start_daemon`],
//! which the MySQL, Redis, LDAP and external phases use for their own
//! daemons.

use std::fmt::Write as _;

use lessor::client::Client;
use tokio_util::sync::CancellationToken;

use crate::setup::Setup;
use crate::{pool, storm, Args, Result};

pub struct Nodes {
    shutdown: CancellationToken,
    running: Vec<lessor::daemon::Running>,
    clients: Vec<Client>,
    /// Each node's folder, removed once the nodes have stopped.
    dirs: Vec<tempfile::TempDir>,
}

impl Nodes {
    /// Starts `args.nodes` daemons one after another (the first creates the
    /// store's schema); on an error, stops those already started.
    pub async fn start(args: &Args, setup: &Setup) -> Result<Self> {
        let mut nodes = Self {
            shutdown: CancellationToken::new(),
            running: Vec::new(),
            clients: Vec::new(),
            dirs: Vec::new(),
        };
        for i in 1..=args.nodes {
            let node = format!("bench-{i}");
            let dir = tempfile::tempdir()?;
            let config = lessor_config(setup, dir.path(), args, &node);
            match start_daemon(&config, "(bench config)", nodes.shutdown.clone()).await {
                Ok(running) => {
                    nodes.clients.push(Client::new(running.socket.clone()));
                    nodes.running.push(running);
                    nodes.dirs.push(dir);
                }
                Err(e) => {
                    nodes.stop().await;
                    return Err(format!("node {node}: {e}").into());
                }
            }
        }
        Ok(nodes)
    }

    /// One client per node, in node order.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Stops every node and waits for each to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for running in self.running {
            running.stopped().await;
        }
        drop(self.dirs);
    }
}

/// The client of load task `task`: the nodes in turn.
pub fn pick(clients: &[Client], task: usize) -> &Client {
    &clients[task % clients.len()]
}

/// An in-process daemon on the bench's runtime, from config `text` (named
/// `source` in errors), stopped when `shutdown` is cancelled.
pub async fn start_daemon(
    text: &str,
    source: &str,
    shutdown: CancellationToken,
) -> Result<lessor::daemon::Running> {
    let config = lessor::daemon::load_str(text, source).map_err(|e| format!("config: {e}"))?;
    Ok(lessor::daemon::start(config, shutdown).await?)
}

/// The TTLs of most bench roles: longer than any run.
pub const HOUR: (&str, &str) = ("1h", "24h");

/// The config of node `node_id`, its socket (and SQLite store, audit log)
/// in `dir`.
pub fn lessor_config(setup: &Setup, dir: &std::path::Path, args: &Args, node_id: &str) -> String {
    let n = &setup.names;
    let mut text = String::new();
    let _ = writeln!(text, "[server]");
    let _ = writeln!(text, "socket = {}", toml_str(&dir.join("lessor.sock").display().to_string()));
    let _ = writeln!(text, "socket_mode = \"0600\"");
    let _ = writeln!(text, "node_id = {}", toml_str(node_id));
    if args.postgres_store {
        let url = format!("postgres://{}@{}:{}/{}", n.admin, setup.host, setup.port, n.database);
        let _ = writeln!(text, "store = {}", toml_str(&url));
        let _ = writeln!(text, "store_password_env = {}", toml_str(&setup.password_env));
    } else {
        let _ =
            writeln!(text, "store = {}", toml_str(&format!("sqlite://{}", dir.join("lessor.db").display())));
    }
    if args.audit {
        let _ = writeln!(text, "audit_log = {}", toml_str(&dir.join("audit.jsonl").display().to_string()));
    }
    connection_table(&mut text, setup, args, "bench", "postgres");
    for (role, statements) in [
        ("grp", setup.grp_statements()),
        ("direct", setup.direct_statements()),
        ("drain", setup.grp_statements()),
    ] {
        role_table(&mut text, setup, role, "bench", &statements, HOUR);
    }
    // Phase `storm`: revocations that wait on the bench's advisory lock.
    role_table(&mut text, setup, storm::ROLE, "bench", &setup.grp_statements(), HOUR);
    let _ = writeln!(text, "revocation_statements = {}", toml_list(&storm::revocation_statements(setup)));
    // Short leases, so the keeper of phase `pool` replaces its credential
    // while the load runs.
    role_table(&mut text, setup, pool::ROLE, "bench", &setup.grp_statements(), ("6s", "12s"));
    text
}

/// Appends `[connections.NAME]`: the bench database as its admin, served
/// by `plugin` (`postgres`, or an external plugin's name), with the run's
/// pool, TLS and password settings.
pub fn connection_table(text: &mut String, setup: &Setup, args: &Args, name: &str, plugin: &str) {
    let n = &setup.names;
    let _ = writeln!(text, "\n[connections.{name}]\nplugin = {}", toml_str(plugin));
    let _ = writeln!(
        text,
        "url = {}",
        toml_str(&format!(
            "postgres://{}@{}:{}/{}{}",
            n.admin,
            setup.host,
            setup.port,
            n.database,
            tls_query(args)
        ))
    );
    let _ = writeln!(text, "password_env = {}", toml_str(&setup.password_env));
    let _ = writeln!(text, "max_connections = {}", args.max_connections());
    let _ = writeln!(text, "revocation_workers = {}", args.revocation_workers);
    if let Some(encoding) = &args.password_encoding {
        let _ = writeln!(text, "password_encoding = {}", toml_str(encoding));
    }
    if let Some(iterations) = args.scram_iterations {
        let _ = writeln!(text, "scram_iterations = {iterations}");
    }
}

/// Appends `[roles.NAME]` on `connection`: `statements`, usernames under
/// the run's prefix, leases of `ttls` (default, max). The table is left
/// open: what the caller writes next belongs to the role.
pub fn role_table(
    text: &mut String,
    setup: &Setup,
    name: &str,
    connection: &str,
    statements: &[String],
    (default_ttl, max_ttl): (&str, &str),
) {
    let template = format!("{}{{role}}_{{random}}", setup.names.prefix);
    let _ = writeln!(text, "\n[roles.{name}]\nconnection = {}", toml_str(connection));
    let _ = writeln!(text, "username_template = {}", toml_str(&template));
    let _ = writeln!(text, "default_ttl = {}\nmax_ttl = {}", toml_str(default_ttl), toml_str(max_ttl));
    let _ = writeln!(text, "creation_statements = {}", toml_list(statements));
}

/// `s` as a TOML string (JSON's escapes are TOML's).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn toml_list(v: &[String]) -> String {
    format!("[{}]", v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", "))
}

/// The URL's TLS parameters for `--sslmode`; a verifying mode trusts the
/// test CA (`scripts/test` makes it and gives the cluster its certificate).
pub fn tls_query(args: &Args) -> String {
    match args.sslmode.as_deref() {
        None => String::new(),
        Some(mode @ ("verify-ca" | "verify-full")) => {
            let dir =
                std::env::var("LESSOR_TEST_TLS_DIR").unwrap_or_else(|_| "/var/tmp/lessor-test-tls".into());
            format!("?sslmode={mode}&sslrootcert={dir}/ca.pem")
        }
        Some(mode) => format!("?sslmode={mode}"),
    }
}
