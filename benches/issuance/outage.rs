//! Phase `outage`: a restart after a long outage.
//!
//! `--outage-leases` (default 100 000) real roles of `grp`'s shape are made
//! directly on PostgreSQL (a precomputed 1-iteration verifier, so making
//! them costs no hashing), and a fresh SQLite store (lessor's own schema)
//! gets an `active` lease for each that expired between an hour and a
//! minute ago: every lease ran out while no daemon ran. Then `lessor serve`
//! is started on that store as a process of its own, with N clients
//! issuing `grp` credentials from its first answer on, and the phase
//! reports:
//! - the drain: how long after the start until `pg_roles` holds none of
//!   the roles, and the rate from the start;
//! - the most connections lessor held on the backend at any poll
//!   (`pg_stat_activity`, by the connection's `application_name`) against
//!   its pool's size (`max_connections`);
//! - issuance latency while the drain runs, and after it.

use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};

use crate::nodes::lessor_config;
use crate::report::{ms, verdict};
use crate::scale::fill;
use crate::serve::{print_latency, Issuers, Serve};
use crate::setup::{connect, count_roles, vacuum_catalogs, Setup};
use crate::{Args, Result};

/// How long the drain may take before the phase gives up on it.
const DRAIN_DEADLINE: Duration = Duration::from_secs(300);
/// Roles per statement while making them.
const MAKE_CHUNK: usize = 2_000;
/// The application name of the restarted daemon's backend connections.
const APPLICATION: &str = "lessor-outage";

pub async fn phase(args: &Args, setup: &Setup) -> Result<()> {
    let leases = args.outage_leases;
    println!(
        "\noutage: {leases} leases that all expired while no daemon ran, then `lessor serve` started on them"
    );
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("lessor.toml");
    let config = lessor_config(setup, dir.path(), args, "bench-outage");
    // The restarted daemon's connections, told apart from the bench's own
    // daemons' by their application name.
    let url = format!("/{}{}", setup.names.database, crate::nodes::tls_query(args));
    let separator = if url.contains('?') { '&' } else { '?' };
    let tagged =
        config.replacen(&format!("{url}\""), &format!("{url}{separator}application_name={APPLICATION}\""), 1);
    if tagged == config {
        return Err("outage: the connection's url was not found in the config".into());
    }
    std::fs::write(&config_path, tagged)?;

    let prefix = setup.names.minted("outage");
    let t = Instant::now();
    make_roles(setup, &prefix, leases).await?;
    let store = dir.path().join("lessor.db");
    let (path, names) = (store.clone(), prefix.clone());
    tokio::task::spawn_blocking(move || fill(&path, leases, &names, -3_600_000..-60_000)).await??;
    println!("  {leases} roles made and their expired leases stored in {:.1} s", t.elapsed().as_secs_f64());
    vacuum_catalogs(setup).await;

    let su = connect(&setup.superuser).await?;
    let mut serve = Serve::start(dir.path(), &config_path)?;
    let outcome = measure(args, &su, &mut serve, &prefix, leases).await;
    serve.stop(outcome.is_err()).await;
    vacuum_catalogs(setup).await;
    outcome
}

/// Makes `count` roles `<prefix><n>` as the admin, in `grp`'s shape, on
/// two connections.
async fn make_roles(setup: &Setup, prefix: &str, count: usize) -> Result<()> {
    let verifier = lessor_postgres::scram::verifier(&Alphanumeric.sample_string(&mut rand::rng(), 32), 1);
    let readers = setup.names.readers.clone();
    let mut tasks = Vec::new();
    for part in 0..2 {
        let admin = connect(&setup.admin_config()).await?;
        let (prefix, verifier, readers) = (prefix.to_string(), verifier.clone(), readers.clone());
        tasks.push(tokio::spawn(async move {
            let mut from = part * MAKE_CHUNK;
            while from < count {
                let to = (from + MAKE_CHUNK).min(count) - 1;
                admin
                    .batch_execute(&format!(
                        "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
                           EXECUTE format('CREATE ROLE %I WITH LOGIN PASSWORD %L IN ROLE {readers}', '{prefix}' || i, '{verifier}'); \
                         END LOOP; END $$"
                    ))
                    .await?;
                from += 2 * MAKE_CHUNK;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The restarted daemon's connections to the backend now.
async fn lessor_connections(su: &tokio_postgres::Client) -> Result<i64> {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1";
    Ok(su.query_one(sql, &[&APPLICATION]).await?.get(0))
}

async fn measure(
    args: &Args,
    su: &tokio_postgres::Client,
    serve: &mut Serve,
    prefix: &str,
    leases: usize,
) -> Result<()> {
    let started = serve.started;
    let deadline = started + DRAIN_DEADLINE;
    let answering = serve.answering(deadline).await?;
    // N clients issue from the first answer until the end of the phase.
    let issuers = Issuers::start(&serve.client, args.n);

    // Poll the roles left and lessor's backend connections until none is left.
    let mut most_connections = 0i64;
    let mut remaining = leases as i64;
    let mut first_gone = None;
    while remaining > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        remaining = count_roles(su, prefix).await?;
        if first_gone.is_none() && remaining < leases as i64 {
            first_gone = Some(started.elapsed());
        }
        most_connections = most_connections.max(lessor_connections(su).await?);
    }
    let drained_at = started.elapsed();
    let drained = leases as i64 - remaining;
    // Issuance goes on for `seconds` after the drain, for the latency after.
    let after_window = Duration::from_secs_f64(args.seconds);
    tokio::time::sleep(after_window).await;
    let (mut during, mut after) = issuers.finish(started + drained_at).await?;
    most_connections = most_connections.max(lessor_connections(su).await?);

    during.elapsed = drained_at.saturating_sub(answering);
    after.elapsed = after_window;

    let rate = drained as f64 / drained_at.as_secs_f64();
    println!(
        "  answering after {:.0} ms; first role gone after {:.0} ms; {drained} of {leases} roles gone {:.2} s after the start{}",
        ms(answering),
        first_gone.map_or(-1.0, ms),
        drained_at.as_secs_f64(),
        if remaining > 0 { format!(" (DRAIN INCOMPLETE: {remaining} left)") } else { String::new() }
    );
    println!(
        "  drain            {rate:>8.1} leases/s from the start (target ≥ 10000: {})",
        verdict(rate >= 10_000.0 && remaining == 0)
    );
    let pool = args.max_connections() as i64;
    println!(
        "  connections      at most {most_connections} on the backend at any poll; the pool's size is {pool} \
         (target: never more: {})",
        verdict(most_connections <= pool)
    );
    print_latency("  ", "during the drain", &during);
    print_latency("  ", "after it", &after);
    println!(
        "  issuance p99 during the drain {:.1} ms (target < 100 ms: {})",
        ms(during.percentile(99.0)),
        verdict(during.percentile(99.0) < Duration::from_millis(100) && during.errors == 0)
    );
    Ok(())
}
