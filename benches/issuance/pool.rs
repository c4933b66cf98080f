//! Phase `pool`: what the credential keeper costs an application.
//!
//! N tasks run `SELECT count(*) FROM t` through a deadpool of N
//! connections for S seconds, two ways, alternated over two rounds:
//! - `fixed`: deadpool-postgres with the bench admin's fixed password;
//! - `keeper`: `lessor_client::pool::PgPool` following a keeper on role
//!   `pool` (TTL 6 s, max_ttl 12 s, so the keeper renews, replaces the
//!   credential every 8 s or so, and the pool moves to each new user while
//!   the load runs).
//!
//! The figure is keeper throughput / fixed throughput (target ≥ 0.98), and
//! the failed queries of each (target 0).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor::client::Client;
use lessor_client::keeper::{Keeper, Options, Source};
use tokio_postgres::NoTls;

use crate::report::verdict;
use crate::setup::Setup;
use crate::{Args, Result};

/// The role the phase's keeper holds (see `lessor_config`).
pub const ROLE: &str = "pool";

struct Outcome {
    ok: u64,
    failed: u64,
    users: usize,
}

async fn load<F, Fut>(n: usize, duration: Duration, query: F) -> Outcome
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::result::Result<String, String>> + Send,
{
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let users = Arc::new(Mutex::new(BTreeSet::new()));
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (ok, failed, users, query) = (ok.clone(), failed.clone(), users.clone(), query.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    match query().await {
                        Ok(user) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            users.lock().unwrap().insert(user);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let users = users.lock().unwrap().len();
    Outcome { ok: ok.load(Ordering::Relaxed), failed: failed.load(Ordering::Relaxed), users }
}

const QUERY: &str = "SELECT current_user::text, count(*) FROM t";

pub async fn phase(args: &Args, setup: &Setup, client: &Client) -> Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    let n = args.n;
    println!("\npool: {n} tasks, `{QUERY}` through a pool of {n}, {duration:?} each, alternated");
    let fixed =
        deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(setup.admin_config(), NoTls))
            .max_size(n)
            .build()?;
    let keeper = Keeper::start(
        client.clone(),
        Source::Role { role: ROLE.into(), ttl: None },
        Options { drain: Duration::from_secs(2), ..Options::default() },
    )
    .await?;
    let kept = lessor_client::pool::PgPool::builder(lessor_client::pool::PgManager::new(
        setup.admin_config(),
        NoTls,
        keeper.subscribe(),
    ))
    .max_size(n)
    .build()?;
    let mut ratios = Vec::new();
    for round in 1..=2 {
        let pool = fixed.clone();
        let f = load(n, duration, move || {
            let pool = pool.clone();
            async move {
                let conn = pool.get().await.map_err(|e| e.to_string())?;
                conn.query_one(QUERY, &[]).await.map(|r| r.get::<_, String>(0)).map_err(|e| e.to_string())
            }
        })
        .await;
        let pool = kept.clone();
        let k = load(n, duration, move || {
            let pool = pool.clone();
            async move {
                let conn = pool.get().await.map_err(|e| e.to_string())?;
                conn.query_one(QUERY, &[]).await.map(|r| r.get::<_, String>(0)).map_err(|e| e.to_string())
            }
        })
        .await;
        let secs = duration.as_secs_f64();
        let (fr, kr) = (f.ok as f64 / secs, k.ok as f64 / secs);
        ratios.push(kr / fr);
        println!(
            "  round {round}: fixed {fr:>9.1} queries/s ({} failed)   keeper {kr:>9.1} queries/s ({} failed, {} users)   keeper/fixed {:.3}",
            f.failed,
            k.failed,
            k.users,
            kr / fr
        );
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!("  keeper/fixed throughput {mean:.3} (target ≥ 0.98: {})", verdict(mean >= 0.98));
    kept.close();
    fixed.close();
    keeper.shutdown().await;
    Ok(())
}
