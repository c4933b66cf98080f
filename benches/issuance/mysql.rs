//! The MySQL/MariaDB phase of the issuance benchmark (`--phases mysql`):
//! the same creation statements run directly with N connections ("raw"),
//! then through lessor over the Unix socket, in the same run.
//!
//! The server comes from `LESSOR_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/`; an account that may create users and
//! grant, on 127.0.0.1 or localhost). The phase creates, and drops at the
//! end, an admin user with the privileges the manual asks for, a database
//! with one table, and every user it minted (found by the run's prefix).
//!
//! The role: `CREATE USER … IDENTIFIED BY …` then `GRANT SELECT ON db.t`,
//! run in order without a transaction, as the plugin does. Raw: N
//! mysql_async connections as the admin, each making users with a fresh
//! name and password as fast as it can. lessor: N tasks calling
//! `POST /v1/creds/{role}` against a daemon started in this process with
//! `max_connections` admin connections (N for issuance, the rest kept for
//! revocations), then raw once more, so drift of a shared machine shows.
//! Every user minted in a sub-phase is dropped before the next one, so no
//! side pays for another's users in the server's account tables.

use std::time::Duration;

use lessor::client::Client;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use rand::distr::{Alphanumeric, SampleString};
use tokio_util::sync::CancellationToken;

use crate::load::{drive, lessor_ops, Op};
use crate::nodes::start_daemon;
use crate::report::{print_ratios, print_stats, Targets};
use crate::setup::lower;
use crate::{scrape, Result};

/// Where the phase charges the server's CPU.
const SERVER: &str = "the MySQL server";
/// The MySQL targets (BENCHMARKS.md): at least 0.9 × raw's throughput, at
/// most 1.3 × raw's p99.
const TARGETS: Targets = Targets { throughput: 0.9, p99: 1.3, width: 15 };

/// What the phase needs from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_connections: usize,
    pub revocation_workers: usize,
}

/// Runs the phase and always cleans up.
pub async fn phase(params: Params) -> Result<()> {
    let url =
        std::env::var("LESSOR_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/".into());
    let root = OptsBuilder::from_opts(Opts::from_url(&url)?).prefer_socket(false);
    let opts = Opts::from(root.clone());
    if !matches!(opts.ip_or_hostname(), "127.0.0.1" | "localhost") {
        return Err(
            format!("LESSOR_TEST_MYSQL_URL must point at 127.0.0.1 (got {})", opts.ip_or_hostname()).into()
        );
    }
    let fixture = Fixture::create(root, opts.tcp_port()).await?;
    let result = run(&fixture, params).await;
    match fixture.cleanup().await {
        Ok(n) => eprintln!("cleanup: dropped MySQL database {} and {n} users", fixture.database),
        Err(e) => eprintln!("cleanup FAILED (drop users starting with {:?} by hand): {e}", fixture.prefix),
    }
    result
}

/// The run's admin user and database, all named from one random run id.
struct Fixture {
    root: OptsBuilder,
    port: u16,
    /// Prefix of every user the run creates, admin included.
    prefix: String,
    admin: String,
    admin_password: String,
    database: String,
    version: String,
}

impl Fixture {
    async fn create(root: OptsBuilder, port: u16) -> Result<Self> {
        let run = lower(6);
        let prefix = format!("lbm_{run}_");
        let admin = format!("{prefix}admin");
        let admin_password = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let database = format!("lbm_{run}_db");
        let mut su = Conn::new(root.clone()).await?;
        let version: String = su.query_first("SELECT VERSION()").await?.unwrap_or_default();
        let connection_admin =
            if version.contains("MariaDB") { "CONNECTION ADMIN" } else { "CONNECTION_ADMIN" };
        su.query_drop(format!(
            "CREATE USER '{admin}'@'%' IDENTIFIED BY '{admin_password}';
             GRANT CREATE USER, PROCESS, {connection_admin} ON *.* TO '{admin}'@'%';
             GRANT SELECT ON mysql.* TO '{admin}'@'%';
             CREATE DATABASE `{database}`;
             CREATE TABLE `{database}`.t (id INT);
             GRANT SELECT ON `{database}`.* TO '{admin}'@'%' WITH GRANT OPTION;"
        ))
        .await?;
        su.disconnect().await?;
        Ok(Self { root, port, prefix, admin, admin_password, database, version })
    }

    fn admin_opts(&self) -> OptsBuilder {
        self.root.clone().user(Some(&self.admin)).pass(Some(&self.admin_password)).db_name(None::<String>)
    }

    fn statements(&self) -> Vec<String> {
        vec![
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'".to_string(),
            format!("GRANT SELECT ON `{}`.t TO '{{{{name}}}}'@'%'", self.database),
        ]
    }

    /// Prefix of the users minted by one side (`raw`, or lessor's role).
    fn minted(&self, kind: &str) -> String {
        format!("{}{kind}_", self.prefix)
    }

    /// Drops every user under `prefix` (admin excluded); returns how many.
    async fn drop_users(&self, prefix: &str) -> Result<usize> {
        let mut su = Conn::new(self.root.clone()).await?;
        let pattern = format!("{}%", prefix.replace('_', "\\_"));
        let users: Vec<(String, String)> = su
            .exec("SELECT User, Host FROM mysql.user WHERE User LIKE ? AND User <> ?", (pattern, &self.admin))
            .await?;
        for chunk in users.chunks(200) {
            let list: Vec<String> = chunk.iter().map(|(u, h)| format!("`{u}`@`{h}`")).collect();
            su.query_drop(format!("DROP USER IF EXISTS {}", list.join(", "))).await?;
        }
        su.disconnect().await?;
        Ok(users.len())
    }

    async fn cleanup(&self) -> Result<usize> {
        let dropped = self.drop_users(&self.prefix).await?;
        let mut su = Conn::new(self.root.clone()).await?;
        su.query_drop(format!(
            "DROP DATABASE IF EXISTS `{}`; DROP USER IF EXISTS `{}`@`%`",
            self.database, self.admin
        ))
        .await?;
        su.disconnect().await?;
        Ok(dropped + 1)
    }
}

async fn run(fx: &Fixture, p: Params) -> Result<()> {
    let statements = fx.statements();
    let mysqld = server_pid();
    let server: Vec<i32> = mysqld.into_iter().collect();
    println!(
        "\nMySQL phase: {} at 127.0.0.1:{}; N={} S={}s warmup={}s max_connections={} revocation_workers={}",
        fx.version,
        fx.port,
        p.n,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.max_connections,
        p.revocation_workers
    );
    println!("role `my`: {}", statements.join("; "));
    if mysqld.is_none() {
        println!("  (no mariadbd/mysqld process found on this machine: server CPU is not measured)");
    }

    // Raw.
    let raw_prefix = fx.minted("raw");
    if !p.warmup.is_zero() {
        drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.warmup, &server, None).await;
    }
    fx.drop_users(&raw_prefix).await?;
    let raw = drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.duration, &server, None).await;
    fx.drop_users(&raw_prefix).await?;
    print_stats("raw", &raw, SERVER);

    // lessor, in this process, on its own socket.
    let dir = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let running =
        start_daemon(&lessor_config(fx, dir.path(), p)?, "(bench mysql config)", shutdown.clone()).await?;
    let clients = [Client::new(running.socket.clone())];
    let outcome = async {
        let lessor_prefix = fx.minted(ROLE);
        if !p.warmup.is_zero() {
            drive(lessor_ops(&clients, p.n, ROLE), p.warmup, &server, None).await;
        }
        fx.drop_users(&lessor_prefix).await?;
        let before = scrape::metrics(&clients[0]).await?;
        let lessor = drive(lessor_ops(&clients, p.n, ROLE), p.duration, &server, None).await;
        let after = scrape::metrics(&clients[0]).await?;
        print_stats("lessor", &lessor, SERVER);
        let delta = |name: &str| after.since(&before, name);
        let issued = delta("lessor_leases_issued_total");
        println!(
            "  lessor internals  {:.0} transient retries; {:.0} store commits for {issued:.0} issuances ({:.2} per issuance)",
            delta("lessor_transient_retries_total"),
            delta("lessor_store_commits_total"),
            delta("lessor_store_commits_total") / issued.max(1.0)
        );
        fx.drop_users(&lessor_prefix).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lessor)
    }
    .await;
    shutdown.cancel();
    running.stopped().await;
    let lessor = outcome?;

    // Raw once more: on a shared machine the server's speed drifts, and
    // a baseline on each side of lessor's run shows by how much.
    let raw_after = drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.duration, &server, None).await;
    fx.drop_users(&raw_prefix).await?;
    print_stats("raw (again)", &raw_after, SERVER);
    print_ratios("vs raw", &raw, &lessor, &TARGETS);
    print_ratios("vs raw (again)", &raw_after, &lessor, &TARGETS);
    Ok(())
}

fn lessor_config(fx: &Fixture, dir: &std::path::Path, p: Params) -> Result<String> {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let password_file = dir.join("mysql_admin.pw");
    std::fs::write(&password_file, &fx.admin_password)?;
    // lessor refuses a password file group or others can read.
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let list: Vec<String> = fx.statements().iter().map(|s| q(s)).collect();
    Ok(format!(
        "[server]\nsocket = {}\nsocket_mode = \"0600\"\nstore = {}\n\n\
         [connections.mybench]\nplugin = \"mysql\"\nurl = {}\npassword_file = {}\nmax_connections = {}\nrevocation_workers = {}\n\n\
         [roles.my]\nconnection = \"mybench\"\nusername_template = {}\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\n\
         creation_statements = [{}]\n",
        q(&dir.join("lessor.sock").display().to_string()),
        q(&format!("sqlite://{}", dir.join("lessor.db").display())),
        q(&format!("mysql://{}@127.0.0.1:{}/", fx.admin, fx.port)),
        q(&password_file.display().to_string()),
        p.max_connections,
        p.revocation_workers,
        q(&format!("{}{{role}}_{{random}}", fx.prefix)),
        list.join(", "),
    ))
}

// ---------------------------------------------------------------------------
// Load

/// The role lessor issues on.
const ROLE: &str = "my";

/// The statements on one admin connection, with a fresh name and password
/// each time.
struct RawCreate {
    conn: Conn,
    prefix: String,
    statements: Vec<String>,
}

impl Op for RawCreate {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let name = format!("{}{}", self.prefix, lower(16));
        let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
        for template in &self.statements {
            let sql = template.replace("{{name}}", &name).replace("{{password}}", &password);
            self.conn.query_drop(sql).await.map_err(|e| match e {
                mysql_async::Error::Server(e) => format!("error {}", e.code),
                other => other.to_string(),
            })?;
        }
        Ok(())
    }
}

async fn raw_ops(fx: &Fixture, n: usize, prefix: &str, statements: &[String]) -> Result<Vec<RawCreate>> {
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let conn = Conn::new(fx.admin_opts()).await?;
        ops.push(RawCreate { conn, prefix: prefix.to_string(), statements: statements.to_vec() });
    }
    Ok(ops)
}

/// The server's process on this machine, for its CPU time.
fn server_pid() -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}
