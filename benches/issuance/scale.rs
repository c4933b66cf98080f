//! Phase `scale`: start-up with a large store.
//!
//! `--scale-leases` active leases (default 1 000 000) are written straight
//! into a fresh store (with the schema `lessor` itself creates), all
//! expiring in one to two days, so none falls due during the run. Then
//! `lessor serve` is started on that store as a process of its own, so its
//! memory is its own (`LESSOR_BENCH_LESSOR_BIN` names another build to
//! start instead, to compare two), and the phase reports:
//! - how long until the socket answers and until `health` says `ready`
//!   (the start-up scan has fed every lease to the expiry index);
//! - the daemon's resident memory at that point and its peak (`VmRSS`,
//!   `VmHWM` from `/proc/<pid>/status`);
//! - issuance latency from N clients, split into requests started during
//!   the scan and requests started after it (the load runs from the first
//!   answer until `--seconds` after ready).
//!
//! It is started twice: alone, then with the N clients issuing, which on a
//! small machine take CPU from the scan.
//!
//! The leases name users that do not exist; the daemon is stopped with
//! SIGTERM before any could expire, and the store is deleted with the temp
//! dir. The credentials issued during the phase are real roles with the
//! run's prefix, dropped by the run's cleanup.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;

use crate::nodes::lessor_config;
use crate::report::{ms, verdict};
use crate::serve::{print_latency, Issuers, Serve};
use crate::setup::Setup;
use crate::{Args, Result};

/// How long the daemon may take to become ready before the phase fails.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Rows per transaction while filling the store.
const FILL_CHUNK: usize = 50_000;

pub async fn phase(args: &Args, setup: &Setup) -> Result<()> {
    let leases = args.scale_leases;
    println!("\nscale: {leases} active leases in the store, then `lessor serve` started on it");
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("lessor.toml");
    std::fs::write(&config_path, lessor_config(setup, dir.path(), args, "bench-scale"))?;
    let store = dir.path().join("lessor.db");

    let t = Instant::now();
    let path = store.clone();
    let prefix = setup.names.minted("scale");
    let (day, two_days) = (86_400_000, 2 * 86_400_000);
    tokio::task::spawn_blocking(move || fill(&path, leases, &prefix, day..two_days)).await??;
    let size = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
    println!("  store filled in {:.1} s ({:.0} MB on disk)", t.elapsed().as_secs_f64(), size as f64 / 1e6);

    // First alone, then with issuance running through the scan: the two
    // starts compete for the same two cores.
    for load in [false, true] {
        start(args, dir.path(), &config_path, load).await?;
    }
    Ok(())
}

/// Starts `lessor serve` on the store, measures it, stops it.
async fn start(args: &Args, dir: &Path, config: &Path, load: bool) -> Result<()> {
    println!("  start {}:", if load { "with N clients issuing from the first answer on" } else { "alone" });
    let mut serve = Serve::start(dir, config)?;
    let outcome = measure(args, &mut serve, load).await;
    serve.stop(outcome.is_err()).await;
    outcome
}

async fn measure(args: &Args, serve: &mut Serve, load: bool) -> Result<()> {
    let deadline = serve.started + READY_DEADLINE;
    let answering = serve.answering(deadline).await?;
    // The load starts now and runs until `seconds` after ready.
    let client = serve.client.clone();
    let issuers = Issuers::start(&client, if load { args.n } else { 0 });
    let ready = loop {
        let response = client.health().await?;
        if response.status == 200 {
            break serve.started.elapsed();
        }
        if Instant::now() > deadline {
            issuers.finish(Instant::now()).await?;
            return Err("lessor serve did not become ready within the deadline".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let ready_at = serve.started + ready;
    let memory_at_ready = memory(serve.pid);
    let scheduled = client.health().await?.body.get("scheduled_leases").and_then(|v| v.as_u64()).unwrap_or(0);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "    answering after {:.0} ms; ready after {:.0} ms (target ≤ 1500 ms: {}), {scheduled} leases scheduled",
        ms(answering),
        ms(ready),
        verdict(ready <= Duration::from_millis(1500))
    );
    println!(
        "    memory at ready: RSS {:.0} MB (target ≤ 200 MB: {}), peak {:.0} MB",
        mb(memory_at_ready.0),
        verdict(mb(memory_at_ready.0) <= 200.0),
        mb(memory_at_ready.1)
    );
    if issuers.is_empty() {
        return Ok(());
    }

    tokio::time::sleep_until((ready_at + Duration::from_secs_f64(args.seconds)).into()).await;
    let (mut during, mut after) = issuers.finish(ready_at).await?;
    during.elapsed = ready.saturating_sub(answering);
    after.elapsed = Duration::from_secs_f64(args.seconds);
    let memory_at_end = memory(serve.pid);
    print_latency("    ", "during the scan", &during);
    print_latency("    ", "after ready", &after);
    println!(
        "    memory after the load: RSS {:.0} MB, peak {:.0} MB",
        mb(memory_at_end.0),
        mb(memory_at_end.1)
    );
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process, in kB (0 when unreadable).
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Creates the store with lessor's own schema, then writes `leases` active
/// leases of role `grp` into it, in transactions of [`FILL_CHUNK`] rows:
/// user `<prefix><n>` for lease n, expiring at a random point of
/// `expiring` (ms from now; phase `outage` gives a range in the past).
pub fn fill(path: &Path, leases: usize, prefix: &str, expiring: std::ops::Range<i64>) -> Result<()> {
    drop(lessor::store::SqliteStore::open(path)?);
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let now = Utc::now().timestamp_millis();
    let hour = 3_600_000i64;
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut rng = rand::rng();
    let mut written = 0;
    while written < leases {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, \
                 max_expires_at, renewable, owner_uid, owner_gid, owner_pid) \
                 VALUES (?1, 'grp', 'bench', ?2, 'active', ?3, ?4, ?5, 1, ?6, ?7, NULL)",
            )?;
            for n in written..(written + FILL_CHUNK).min(leases) {
                let id = format!("grp/{}", Alphanumeric.sample_string(&mut rng, 22));
                let username = format!("{prefix}{n}");
                let expires = now + rng.random_range(expiring.clone());
                let issued = now.min(expires - hour);
                insert.execute(rusqlite::params![id, username, issued, expires, expires + hour, uid, gid])?;
            }
        }
        tx.commit()?;
        written = (written + FILL_CHUNK).min(leases);
    }
    Ok(())
}
