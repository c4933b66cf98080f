//! Phase `drain`: revocation, lessor against the default recipe run
//! directly.
//!
//! M (`--revoke`) leases of role `drain` (`grp`'s statements) that all
//! expire at the same instant, timed from the earliest expiry until
//! `pg_roles` holds none of them; then M roles created directly and
//! dropped with the default revocation recipe on as many connections as
//! lessor has revocation workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use tokio_postgres::error::SqlState;

use crate::load::{backends_cpu_ms, cpu_since, drive, lessor_backends_cpu, lessor_ops, own_cpu_ms};
use crate::report::{print_cpu, ratio, verdict, PG_BACKENDS};
use crate::setup::{connect, count_roles, create_role, pg_error, vacuum_catalogs, Setup};
use crate::{nodes, scrape, Result, Run};

/// How long the drain may take before the run gives up on it.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// How often `pg_roles` is polled during the drain.
pub const POLL: Duration = Duration::from_millis(5);

/// Runs the phase. `grp_rate` is lessor's issuance rate from phase `grp`
/// (a short probe measures it otherwise); `openbao_rate` is OpenBao's drain
/// rate, for one more ratio.
pub async fn phase(run: &Run<'_>, grp_rate: Option<f64>, openbao_rate: Option<f64>) -> Result<()> {
    let Run { args, setup, su, clients, .. } = *run;
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
    let before = scrape::metrics(client).await?;

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
    let mut after = scrape::metrics(client).await?;
    while after.since(&before, "lessor_revocation_lateness_seconds_count") < drained as f64
        && Instant::now() < wait
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape::metrics(client).await?;
    }
    let lessor_rate = drained as f64 / span;
    let delta = |name: &str| after.since(&before, name);
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
        after.max_bound(&before, "lessor_revocation_lateness_seconds") * 1000.0,
        delta("lessor_revocation_lateness_seconds_sum") * 1000.0 / count.max(1.0),
        args.on_all_nodes(),
        delta("lessor_revoke_failures_total"),
    );
    print_drain_cpu(cpu, drained.max(1) as f64);
    let commits = delta("lessor_store_commits_total");
    println!(
        "                     store: {commits:.0} commits, {:.3} per revocation, mean {:.2} ms{}",
        commits / drained.max(1) as f64,
        delta("lessor_store_commit_duration_seconds_sum") * 1000.0
            / delta("lessor_store_commit_duration_seconds_count").max(1.0),
        args.on_all_nodes(),
    );

    let raw_rate = raw_drain(run).await?;
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
            ratio(lessor_rate, openbao_rate)
        );
    }
    Ok(())
}

/// Raw: the same roles created directly, then the default recipe run on as
/// many connections as lessor has revocation workers. Returns the rate.
async fn raw_drain(run: &Run<'_>) -> Result<f64> {
    let Run { args, setup, su, .. } = *run;
    let m = args.revoke;
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
                let password = Alphanumeric.sample_string(&mut rand::rng(), 32);
                let name = create_role(&mut client, &prefix, &statements, &password).await?;
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
    Ok(raw_rate)
}

fn print_drain_cpu((own, backends): (f64, f64), revoked: f64) {
    print_cpu("revocation", &[(own, "this process"), (backends, PG_BACKENDS)], revoked);
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
