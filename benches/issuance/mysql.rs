//! The MySQL/MariaDB phase of the issuance benchmark (`--phases mysql`):
//! the same creation statements run directly with N connections ("raw"),
//! then through lessor over the Unix socket, in the same run.
//!
//! The server comes from `LESSOR_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/`; an account that may create users and
//! grant, on 127.0.0.1 or localhost). The phase creates, and drops at the
//! end, an admin user with the privileges the README asks for, a database
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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lessor::client::Client;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use tokio_util::sync::CancellationToken;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// What the phase needs from the command line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Params {
    pub n: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_connections: usize,
    pub revocation_workers: usize,
}

/// Runs the phase and always cleans up.
pub(super) async fn phase(params: Params) -> Result<()> {
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
        drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.warmup, mysqld).await;
    }
    fx.drop_users(&raw_prefix).await?;
    let raw = drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.duration, mysqld).await;
    fx.drop_users(&raw_prefix).await?;
    print_stats("raw", &raw);

    // lessor, in this process, on its own socket.
    let dir = tempfile::tempdir()?;
    let config = lessor::config::load_str(&lessor_config(fx, dir.path(), p)?, "(bench mysql config)")
        .map_err(|e| format!("config: {e}"))?;
    let shutdown = CancellationToken::new();
    let running = lessor::daemon::start(config, shutdown.clone()).await?;
    let client = Client::new(running.socket.clone());
    let outcome = async {
        let lessor_prefix = fx.minted("my");
        if !p.warmup.is_zero() {
            drive(lessor_ops(&client, p.n), p.warmup, mysqld).await;
        }
        fx.drop_users(&lessor_prefix).await?;
        let before = super::metrics(&client).await?;
        let lessor = drive(lessor_ops(&client, p.n), p.duration, mysqld).await;
        let after = super::metrics(&client).await?;
        print_stats("lessor", &lessor);
        let delta = |name: &str| after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
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
    let raw_after = drive(raw_ops(fx, p.n, &raw_prefix, &statements).await?, p.duration, mysqld).await;
    fx.drop_users(&raw_prefix).await?;
    print_stats("raw (again)", &raw_after);
    print_ratios("vs raw", &raw, &lessor);
    print_ratios("vs raw (again)", &raw_after, &lessor);
    Ok(())
}

fn print_ratios(label: &str, raw: &Stats, lessor: &Stats) {
    let tput = lessor.throughput() / raw.throughput().max(f64::MIN_POSITIVE);
    let p99 = ms(lessor.percentile(99.0)) / ms(raw.percentile(99.0)).max(f64::MIN_POSITIVE);
    println!(
        "  ratios {label:<15} lessor/raw throughput {tput:.2} (target ≥ 0.90: {})   lessor/raw p99 {p99:.2} (target ≤ 1.30: {})",
        if tput >= 0.9 { "met" } else { "MISSED" },
        if p99 <= 1.3 { "met" } else { "MISSED" },
    );
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

enum Op {
    /// The statements on one admin connection, with a fresh name and
    /// password each time.
    Raw { conn: Conn, prefix: String, statements: Vec<String> },
    /// `POST /v1/creds/my` on a fresh socket connection.
    Lessor { client: Client },
}

impl Op {
    async fn run(&mut self) -> std::result::Result<(), String> {
        match self {
            Self::Raw { conn, prefix, statements } => {
                let name = format!("{prefix}{}", lower(16));
                let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
                for template in statements.iter() {
                    let sql = template.replace("{{name}}", &name).replace("{{password}}", &password);
                    conn.query_drop(sql).await.map_err(|e| match e {
                        mysql_async::Error::Server(e) => format!("error {}", e.code),
                        other => other.to_string(),
                    })?;
                }
                Ok(())
            }
            Self::Lessor { client } => {
                let response = client.creds("my", None).await.map_err(|e| format!("client: {e}"))?;
                if response.status == 200 {
                    Ok(())
                } else {
                    Err(format!(
                        "HTTP {} {}",
                        response.status,
                        response.api_error().map(|e| e.code).unwrap_or_default()
                    ))
                }
            }
        }
    }
}

async fn raw_ops(fx: &Fixture, n: usize, prefix: &str, statements: &[String]) -> Result<Vec<Op>> {
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let conn = Conn::new(fx.admin_opts()).await?;
        ops.push(Op::Raw { conn, prefix: prefix.to_string(), statements: statements.to_vec() });
    }
    Ok(ops)
}

fn lessor_ops(client: &Client, n: usize) -> Vec<Op> {
    (0..n).map(|_| Op::Lessor { client: client.clone() }).collect()
}

#[derive(Debug, Default)]
struct Stats {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
    own_cpu_ms: f64,
    server_cpu_ms: f64,
}

impl Stats {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Runs every op in its own task until `duration` has passed; latency is
/// recorded for successes only.
async fn drive(ops: Vec<Op>, duration: Duration, server: Option<u32>) -> Stats {
    let cpu_before = (cpu_ms("self"), server.map_or(0.0, |pid| cpu_ms(&pid.to_string())));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, usize> = BTreeMap::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match op.run().await {
                        Ok(()) => latencies.push(t0.elapsed()),
                        Err(e) => *errors.entry(e).or_default() += 1,
                    }
                }
                (latencies, errors, op)
            })
        })
        .collect();
    let mut all = Stats::default();
    let mut ops = Vec::new();
    for task in tasks {
        let (latencies, errors, op) = task.await.expect("load task panicked");
        all.latencies.extend(latencies);
        for (k, v) in errors {
            *all.errors.entry(k).or_default() += v;
        }
        ops.push(op);
    }
    all.elapsed = start.elapsed();
    all.own_cpu_ms = cpu_ms("self") - cpu_before.0;
    all.server_cpu_ms = server.map_or(0.0, |pid| cpu_ms(&pid.to_string())) - cpu_before.1;
    drop(ops);
    all.latencies.sort_unstable();
    all
}

fn print_stats(label: &str, s: &Stats) {
    let errors: usize = s.errors.values().sum();
    let mean = if s.latencies.is_empty() {
        Duration::ZERO
    } else {
        s.latencies.iter().sum::<Duration>() / s.latencies.len() as u32
    };
    println!(
        "  {label:<16} {:>8.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  mean {:>7.2} ms  max {:>8.2} ms  ok {:>6}  errors {errors}",
        s.throughput(),
        ms(s.percentile(50.0)),
        ms(s.percentile(99.0)),
        ms(mean),
        ms(s.latencies.last().copied().unwrap_or_default()),
        s.latencies.len(),
    );
    let ops = (s.latencies.len() + errors).max(1) as f64;
    println!(
        "  {:<16}   CPU per operation: {:.2} ms in this process, {:.2} ms in the MySQL server",
        "",
        s.own_cpu_ms / ops,
        s.server_cpu_ms / ops
    );
    for (kind, count) in &s.errors {
        println!("  {:<16}   {count} × {kind}", "");
    }
}

/// The server's process on this machine, for its CPU time.
fn server_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}

/// CPU time (user + system) of a process, in milliseconds; 0 when unknown.
fn cpu_ms(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks * 1000.0 / hz
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn lower(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}
