//! Phase `storm`: issuance while every revocation hangs.
//!
//! Revocations run on their own share of a connection's admin sessions
//! (`revocation_workers`), apart from issuance. This phase measures what a
//! storm of stuck revocations costs issuance: `grp` issuance through lessor
//! for S seconds with nothing else going on (*quiet*), then again while
//! `revocation_workers × 4` leases of role `storm` are due and every one
//! of their revocations waits on an advisory lock the bench holds
//! (*storm*). The lock is let go afterwards and the phase waits for the
//! storm's roles to be dropped. The ratio storm/quiet is the figure; the
//! integration test `storm.rs` asserts only that issuance is answered.

use std::time::{Duration, Instant};

use crate::load::{cpu_since, drive, lessor_backends_cpu, lessor_ops};
use crate::report::{ms, print_stats, ratio, PG_BACKENDS};
use crate::setup::{connect, count_roles, vacuum_catalogs, Setup};
use crate::{Result, Run};

/// The role whose revocations hang (its config is in `nodes.rs`).
pub const ROLE: &str = "storm";

/// The advisory lock key every `storm` revocation waits for, per run.
pub fn lock_key(setup: &Setup) -> i64 {
    setup.names.prefix.bytes().fold(7_000_000_i64, |k, b| (k * 31 + i64::from(b)) % 1_000_000_007)
}

/// The revocation statements of role `storm`.
pub fn revocation_statements(setup: &Setup) -> Vec<String> {
    let key = lock_key(setup);
    vec![
        format!("SELECT pg_advisory_lock({key})"),
        format!("SELECT pg_advisory_unlock({key})"),
        "DROP ROLE IF EXISTS \"{{name}}\"".to_string(),
    ]
}

pub async fn phase(run: &Run<'_>) -> Result<()> {
    let Run { args, setup, su, clients, duration, warmup } = *run;
    let due = args.revocation_workers * 4;
    println!(
        "\nphase `storm`: `grp` issuance, quiet, then while {due} due leases' revocations all wait on a lock \
         (revocation_workers = {})",
        args.revocation_workers
    );
    if !warmup.is_zero() {
        drive(lessor_ops(clients, args.n, "grp"), warmup, &[], None).await;
    }
    vacuum_catalogs(setup).await;
    let backends = lessor_backends_cpu(su, setup).await?;
    let mut quiet = drive(lessor_ops(clients, args.n, "grp"), duration, &[], None).await;
    quiet.backends_cpu_ms = cpu_since(&backends, &lessor_backends_cpu(su, setup).await?);
    print_stats("quiet", &quiet, PG_BACKENDS);

    // The bench holds the lock in the bench database (advisory locks are
    // per database), as its admin.
    let locker = connect(&setup.admin_config()).await?;
    let key = lock_key(setup);
    locker.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
    for i in 0..due {
        let issued = crate::nodes::pick(clients, i).creds(ROLE, Some("1s")).await?;
        if issued.status != 200 {
            return Err(format!("storm lease: {} {}", issued.status, issued.body).into());
        }
    }
    let hanging = wait_until(Duration::from_secs(60), || async {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
                 AND wait_event_type = 'Lock' AND strpos(query, 'pg_advisory_lock') > 0",
                &[&setup.names.admin, &setup.names.database],
            )
            .await
            .ok()?;
        let n: i64 = row.get(0);
        (n as usize >= args.revocation_workers).then_some(n)
    })
    .await
    .ok_or("the storm's revocations never all hung on the lock")?;
    println!("  {hanging} revocation sessions wait on the lock; {due} leases due");

    let backends = lessor_backends_cpu(su, setup).await?;
    let mut storm = drive(lessor_ops(clients, args.n, "grp"), duration, &[], None).await;
    storm.backends_cpu_ms = cpu_since(&backends, &lessor_backends_cpu(su, setup).await?);
    print_stats("storm", &storm, PG_BACKENDS);

    locker.execute("SELECT pg_advisory_unlock($1)", &[&key]).await?;
    let prefix = format!("{}{ROLE}_", setup.names.prefix);
    let started = Instant::now();
    wait_until(Duration::from_secs(300), || async {
        (count_roles(su, &prefix).await.ok()? == 0).then_some(())
    })
    .await
    .ok_or("the storm's roles were not dropped after the lock was let go")?;
    println!(
        "  after the lock was let go, the {due} storm roles were gone in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  ratios storm/quiet        throughput {:.2}   p50 {:.2}   p99 {:.2}   ({:.2} → {:.2} ms p99)",
        ratio(storm.throughput(), quiet.throughput()),
        ratio(ms(storm.percentile(50.0)), ms(quiet.percentile(50.0))),
        ratio(ms(storm.percentile(99.0)), ms(quiet.percentile(99.0))),
        ms(quiet.percentile(99.0)),
        ms(storm.percentile(99.0)),
    );
    Ok(())
}

/// Polls `check` until it gives a value or `deadline` passes.
async fn wait_until<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(value) = check().await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
