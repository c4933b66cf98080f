//! A small service that never holds a long-lived database password: it
//! asks lessor for a PostgreSQL credential, keeps it fresh with the
//! credential keeper, and runs its queries through a pool that moves to
//! each new user on its own.
//!
//! ```sh
//! cargo run --example pool_service --features lessor-client/deadpool-postgres -- \
//!     ROLE 'host=127.0.0.1 port=5432 dbname=app' 60
//! ```
//! runs 4 workers issuing `SELECT current_user` for 60 s against the role's
//! database (`LESSOR_SOCKET` names the socket) and prints what it saw. The
//! integration tests run [`run`] the same way.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lessor_client::keeper::{Keeper, Options, Source};
use lessor_client::pool::{PgManager, PgPool};
use lessor_client::Client;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub queries: u64,
    pub failed: u64,
    /// The first few failures' messages.
    pub errors: Vec<String>,
    /// Every user a query ran as.
    pub users: BTreeSet<String>,
}

/// Runs `workers` tasks querying through a keeper-backed pool of `size`
/// connections for `duration`, then revokes the lease it holds.
pub async fn run(
    client: Client,
    source: Source,
    options: Options,
    database: tokio_postgres::Config,
    workers: usize,
    size: usize,
    duration: Duration,
) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let keeper = Keeper::start(client, source, options).await?;
    let pool = PgPool::builder(PgManager::new(database, tokio_postgres::NoTls, keeper.subscribe()))
        .max_size(size)
        .build()?;
    let queries = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(Report::default()));
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, queries, report) = (pool.clone(), queries.clone(), report.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let outcome = async {
                        let conn = pool.get().await.map_err(|e| e.to_string())?;
                        let row = conn
                            .query_one("SELECT current_user::text", &[])
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<String, String>(row.get(0))
                    }
                    .await;
                    queries.fetch_add(1, Ordering::Relaxed);
                    let mut report = report.lock().unwrap();
                    match outcome {
                        Ok(user) => {
                            report.users.insert(user);
                        }
                        Err(e) => {
                            report.failed += 1;
                            if report.errors.len() < 5 {
                                report.errors.push(e);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    pool.close();
    keeper.shutdown().await;
    let mut report = std::mem::take(&mut *report.lock().unwrap());
    report.queries = queries.load(Ordering::Relaxed);
    Ok(report)
}

#[allow(dead_code)] // the tests include this file for `run`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pool_service ROLE 'host=… port=… dbname=…' [SECONDS]";
    let role = args.next().ok_or(usage)?;
    let database: tokio_postgres::Config = args.next().ok_or(usage)?.parse()?;
    let seconds: u64 = args.next().map_or(Ok(60), |s| s.parse())?;
    let source = Source::Role { role, ttl: None };
    let report =
        run(Client::from_env(), source, Options::default(), database, 4, 4, Duration::from_secs(seconds))
            .await?;
    println!(
        "{} queries, {} failed, as {} users: {:?}",
        report.queries,
        report.failed,
        report.users.len(),
        report.users
    );
    Ok(())
}
