//! Phase `window`: many active leases on a shared store, spread over
//! three nodes, each node holding only the deadlines within its expiry
//! window (DESIGN §8).
//!
//! A database of its own (`<bench database>_window`) is the store:
//! 1. one `lessor serve` starts on it empty and N clients issue `grp`
//!    credentials for `--seconds`: the baseline latency;
//! 2. `--window-leases` (default 10 000 000) active leases are written
//!    straight into it (`INSERT … SELECT generate_series`, a million per
//!    transaction), a third per node, expiring at random over the day
//!    after the next half hour, so none falls due during the run;
//! 3. three `lessor serve` processes (`bench-w0`…`bench-w2`, each with
//!    `expiry_window = "1h"`, so about 2 % of the leases fall within it)
//!    start on it at once; the phase reports each one's time to ready and
//!    its resident memory (targets: ≤ 5 s and ≤ 300 MB);
//! 4. N clients issue on `bench-w0` for `--seconds`: latency against the
//!    baseline;
//! 5. `bench-w2` issues 100 leases of 6 s (role `pool`) and is killed
//!    (SIGKILL); the phase waits until the others have revoked every one
//!    and the roles are gone from `pg_roles`, and reports how long after
//!    its expiry each lease was revoked (target: ≤ `node_timeout`, 5 s
//!    here, + 2 s).
//!
//! The filled leases name users that do not exist; the nodes are stopped
//! before any falls due, and the database is dropped at the end (and by
//! the run's cleanup if the phase fails).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::Stats;
use crate::nodes::{lessor_config, toml_str};
use crate::report::{ms, verdict};
use crate::serve::{print_latency, Issuers, Serve};
use crate::setup::{connect, roles_present, Setup};
use crate::{pool, Args, Result};

/// How long a node may take to become ready before the phase fails.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Leases written per transaction while filling the store.
const FILL_CHUNK: i64 = 1_000_000;
/// The nodes' `node_timeout`.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Leases the node that dies issues before it is killed.
const ORPHANS: usize = 100;

/// The store's database name.
pub fn database(setup: &Setup) -> String {
    format!("{}_window", setup.names.database)
}

pub async fn phase(args: &Args, setup: &Setup) -> Result<()> {
    let leases = args.window_leases;
    println!(
        "\nwindow: {leases} active leases over 3 nodes of one PostgreSQL store, each node holding its window"
    );
    let su = connect(&setup.superuser).await?;
    let db = database(setup);
    // One statement each: neither may run inside a transaction block.
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
    su.batch_execute(&format!("CREATE DATABASE {db} OWNER {}", setup.names.admin)).await?;
    let outcome = run(args, setup, &db, leases).await;
    su.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await?;
    outcome
}

async fn run(args: &Args, setup: &Setup, db: &str, leases: i64) -> Result<()> {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let configs: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| write_config(args, setup, dir.path(), db, &format!("bench-w{i}")))
        .collect::<Result<_>>()?;

    // 1. The baseline: one node on the empty store (which it creates).
    let mut serve = Serve::start(dirs[0].path(), &configs[0])?;
    let baseline = async {
        ready(&mut serve).await?;
        issue(&serve, args).await
    }
    .await;
    serve.stop(baseline.is_err()).await;
    let baseline = baseline?;
    print_latency("  ", "empty store", &baseline);

    // 2. The fill.
    let t = Instant::now();
    fill(setup, db, leases).await?;
    println!("  store filled in {:.1} s", t.elapsed().as_secs_f64());

    // 3. Three nodes at once.
    let mut nodes = Vec::new();
    for (dir, config) in dirs.iter().zip(&configs) {
        nodes.push(Serve::start(dir.path(), config)?);
    }
    let outcome = measure(args, setup, db, &mut nodes, &baseline).await;
    for node in nodes {
        node.stop(outcome.is_err()).await;
    }
    outcome
}

async fn measure(args: &Args, setup: &Setup, db: &str, nodes: &mut [Serve], baseline: &Stats) -> Result<()> {
    let mb = |kb: u64| kb as f64 / 1024.0;
    for (i, node) in nodes.iter_mut().enumerate() {
        let took = ready(node).await?;
        let (rss, peak) = crate::scale::memory(node.pid);
        let scheduled =
            node.client.health().await?.body.get("scheduled_leases").and_then(|v| v.as_u64()).unwrap_or(0);
        println!(
            "  bench-w{i}: ready after {:.0} ms (target ≤ 5000 ms: {}), RSS {:.0} MB (target ≤ 300 MB: {}), \
             peak {:.0} MB, {scheduled} own leases scheduled",
            ms(took),
            verdict(took <= Duration::from_secs(5)),
            mb(rss),
            verdict(mb(rss) <= 300.0),
            mb(peak)
        );
    }

    // 4. Issuance with every lease in the store.
    let loaded = issue(&nodes[0], args).await?;
    print_latency("  ", "filled store", &loaded);
    let ratio = |f: fn(&Stats) -> Duration| ms(f(&loaded)) / ms(f(baseline)).max(1e-9);
    println!(
        "  latency against the empty store: p50 {:.2} ×, p99 {:.2} ×",
        ratio(|s| s.percentile(50.0)),
        ratio(|s| s.percentile(99.0))
    );
    for (i, node) in nodes.iter().enumerate() {
        let (rss, peak) = crate::scale::memory(node.pid);
        println!("  bench-w{i} after the load: RSS {:.0} MB, peak {:.0} MB", mb(rss), mb(peak));
    }

    // 5. A node dies with leases about to expire.
    let dying = &nodes[2];
    let mut usernames = Vec::new();
    for _ in 0..ORPHANS {
        let response = dying.client.creds(pool::ROLE, Some("6s")).await?;
        if response.status != 200 {
            return Err(format!("bench-w2 answered {} to an issuance", response.status).into());
        }
        let username = response.body["credential"]["username"].as_str().ok_or("no username in the answer")?;
        usernames.push(username.to_string());
    }
    unsafe { libc::kill(dying.pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let store = connect(&store_config(setup, db)).await?;
    let deadline = killed + Duration::from_secs(120);
    let (revoked, late_ms) = loop {
        let row = store
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'revoked'), \
                        coalesce(max(revoked_at - expires_at) FILTER (WHERE state = 'revoked'), 0) \
                 FROM leases WHERE node = 'bench-w2' AND username = ANY($1)",
                &[&usernames],
            )
            .await?;
        let (revoked, late): (i64, i64) = (row.get(0), row.get(1));
        if revoked == ORPHANS as i64 || Instant::now() > deadline {
            break (revoked, late);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let su = connect(&setup.superuser).await?;
    let left = roles_present(&su, usernames).await?;
    let limit = NODE_TIMEOUT + Duration::from_secs(2);
    println!(
        "  bench-w2 killed with {ORPHANS} leases of 6 s: {revoked} revoked by the others, {left} roles left; \
         the latest {late_ms} ms after its expiry (target ≤ node_timeout + 2 s = {} ms: {})",
        limit.as_millis(),
        verdict(revoked == ORPHANS as i64 && left == 0 && late_ms <= limit.as_millis() as i64)
    );
    if revoked != ORPHANS as i64 || left != 0 {
        return Err(format!(
            "{} of bench-w2's leases were not revoked within two minutes",
            ORPHANS as i64 - revoked
        )
        .into());
    }
    Ok(())
}

/// The config of `node`: the bench's, its store the window database, with
/// a 1 h expiry window and a 5 s node timeout.
fn write_config(args: &Args, setup: &Setup, dir: &Path, db: &str, node: &str) -> Result<std::path::PathBuf> {
    let n = &setup.names;
    let text = lessor_config(setup, dir, &Args { postgres_store: false, ..args.clone() }, node);
    let sqlite = format!("store = {}", toml_str(&format!("sqlite://{}", dir.join("lessor.db").display())));
    let url = format!("postgres://{}@{}:{}/{db}", n.admin, setup.host, setup.port);
    let server = format!(
        "store = {}\nstore_password_env = {}\nexpiry_window = \"1h\"\nnode_timeout = \"{}s\"",
        toml_str(&url),
        toml_str(&setup.password_env),
        NODE_TIMEOUT.as_secs()
    );
    let text = text.replacen(&sqlite, &server, 1);
    if !text.contains(&server) {
        return Err("window: the store line was not found in the config".into());
    }
    let path = dir.join("lessor.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The store database as the bench admin.
fn store_config(setup: &Setup, db: &str) -> tokio_postgres::Config {
    let mut config = setup.admin_config();
    config.dbname(db);
    config
}

/// Waits until `node` is ready; how long after its start.
async fn ready(node: &mut Serve) -> Result<Duration> {
    let deadline = node.started + READY_DEADLINE;
    node.answering(deadline).await?;
    loop {
        if node.client.health().await?.status == 200 {
            return Ok(node.started.elapsed());
        }
        if Instant::now() > deadline {
            return Err("a node did not become ready within the deadline".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// N clients issue `grp` credentials on `node` for `--seconds`.
async fn issue(node: &Serve, args: &Args) -> Result<Stats> {
    let issuers = Issuers::start(&node.client, args.n);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (_, mut stats) = issuers.finish(start).await?;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Writes `leases` active leases of role `grp` into the store, a third of
/// them each node's, expiring at random over the day after the next half
/// hour, then analyzes the table.
async fn fill(setup: &Setup, db: &str, leases: i64) -> Result<()> {
    let store = connect(&store_config(setup, db)).await?;
    let (uid, gid) = unsafe { (libc::getuid() as i64, libc::getgid() as i64) };
    let mut from = 1i64;
    while from <= leases {
        let to = (from + FILL_CHUNK - 1).min(leases);
        store
            .execute(
                "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, \
                 max_expires_at, renewable, owner_uid, owner_gid, node) \
                 SELECT 'grp/' || lpad(to_hex(i), 22, '0'), 'grp', 'bench', 'wfill_' || i, 'active', \
                        now_ms, e, e + 3600000, true, $3, $4, 'bench-w' || (i % 3) \
                 FROM (SELECT i, lessor_now_ms() AS now_ms, \
                              lessor_now_ms() + 1800000 + (random() * 86400000)::bigint AS e \
                       FROM generate_series($1::bigint, $2::bigint) AS i) AS s",
                &[&from, &to, &uid, &gid],
            )
            .await?;
        from = to + 1;
    }
    store.batch_execute("VACUUM ANALYZE leases").await?;
    Ok(())
}
