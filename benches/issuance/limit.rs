//! The physical limit of role creation, for phase `grp`: what PostgreSQL
//! itself can do when nobody hashes anything.
//!
//! `pgbench` (from `LESSOR_BENCH_PGBENCH` or `PATH`) runs `grp`'s creation
//! statement with N clients for S seconds, as the run's admin: one
//! autocommitted `CREATE ROLE … PASSWORD '<verifier>' … IN ROLE …` per
//! transaction, a fresh random name each time and one SCRAM verifier of a
//! single PBKDF2 iteration computed once before the run. PostgreSQL hashes
//! every verifier it is given with the verifier's own iteration count (its
//! empty-password check), so with one iteration the server's cost is the
//! role's catalog work and its commit: lessor at `scram_iterations = 1`
//! does nothing the backend must do that this leaves out.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};

use crate::setup::{count_roles, vacuum_catalogs, Setup};
use crate::{Result, Run};

/// What `pgbench` reported.
pub struct Limit {
    pub tps: f64,
    pub latency_ms: f64,
    pub failed: u64,
}

/// The `pgbench` to run, if there is one.
fn pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LESSOR_BENCH_PGBENCH") {
        return Some(path.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("pgbench")).find(|p| p.is_file())
}

/// Runs the limit (a warm-up first, then the measured run); `None` with a
/// note when there is no `pgbench`.
pub async fn measure(run: &Run<'_>) -> Result<Option<Limit>> {
    let Run { args, setup, su, duration, warmup, .. } = *run;
    let Some(pgbench) = pgbench() else {
        println!(
            "  limit            skipped: no pgbench (install postgresql-client, or set LESSOR_BENCH_PGBENCH)"
        );
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("limit.sql");
    let prefix = setup.names.minted("limit");
    let verifier = loop {
        let v = lessor_postgres::scram::verifier(&Alphanumeric.sample_string(&mut rand::rng(), 32), 1);
        if !names_a_variable(&v) {
            break v;
        }
    };
    let expiration = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d %H:%M:%S+00");
    std::fs::write(
        &script,
        format!(
            "\\set r random(1, 1000000000000)\n\
             CREATE ROLE \"{prefix}:r\" WITH LOGIN PASSWORD '{verifier}' VALID UNTIL '{expiration}' IN ROLE {}\n",
            setup.names.readers
        ),
    )?;
    if !warmup.is_zero() {
        run_pgbench(&pgbench, setup, args.n, warmup, &script).await?;
    }
    vacuum_catalogs(setup).await;
    let before = count_roles(su, &prefix).await?;
    let limit = run_pgbench(&pgbench, setup, args.n, duration, &script).await?;
    let made = count_roles(su, &prefix).await? - before;
    println!(
        "  limit            {:>8.1} ops/s  mean {:>7.2} ms  ({made} roles made, {} failed; pgbench -M simple \
         -c {}: one autocommitted CREATE ROLE with a precomputed 1-iteration SCRAM verifier)",
        limit.tps, limit.latency_ms, limit.failed, args.n
    );
    Ok(Some(limit))
}

/// Whether pgbench would read a variable of its own inside `verifier`: it
/// substitutes `:name` anywhere in a statement, and a base64 part after a
/// `:` could start with one (`:r+…`).
fn names_a_variable(verifier: &str) -> bool {
    verifier.split(':').skip(1).any(|part| {
        let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        ["r", "client_id", "scale", "random_seed", "default_seed"].contains(&name.as_str())
    })
}

async fn run_pgbench(
    pgbench: &PathBuf,
    setup: &Setup,
    clients: usize,
    time: Duration,
    script: &std::path::Path,
) -> Result<Limit> {
    let output = tokio::process::Command::new(pgbench)
        .args(["-n", "-M", "simple", "-h", &setup.host, "-p", &setup.port.to_string()])
        .args(["-U", &setup.names.admin, "-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string(), "-T", &time.as_secs().max(1).to_string(), "-f"])
        .arg(script)
        .arg(&setup.names.database)
        .env("PGPASSWORD", &setup.admin_password)
        .env("PGAPPNAME", "lessor-bench-raw")
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let field = |key: &str| {
        stdout.lines().find_map(|l| l.trim().strip_prefix(key)).and_then(|rest| {
            rest.trim_start_matches([' ', '=', ':']).split_whitespace().next().and_then(|v| v.parse().ok())
        })
    };
    Ok(Limit {
        tps: field("tps").ok_or_else(|| format!("pgbench printed no tps:\n{stdout}"))?,
        latency_ms: field("latency average").unwrap_or(0.0),
        failed: field("number of failed transactions").unwrap_or(0.0) as u64,
    })
}
