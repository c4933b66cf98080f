//! The load driver every phase measures with: N operations, each looping
//! in a task of its own for S seconds ([`drive`]), their latencies and
//! errors gathered into [`Stats`], and the CPU the run cost this process
//! and the database server's processes (read from `/proc`: the servers run
//! on this machine).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::client::Client;

use crate::setup::Setup;
use crate::{nodes, Result};

/// One kind of operation, run in a loop by one task.
pub trait Op: Send + 'static {
    fn run(&mut self) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Latencies of the successful operations, sorted once the run is over.
    pub latencies: Vec<Duration>,
    pub errors: usize,
    pub error_kinds: BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// CPU used by this process during the run, in ms.
    pub own_cpu_ms: f64,
    /// CPU used by the database server's processes serving the run, in ms.
    pub backends_cpu_ms: f64,
}

impl Stats {
    pub fn ok(&self) -> usize {
        self.latencies.len()
    }
    pub fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
    pub fn mean(&self) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }
    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    /// `parts` as one run: their operations, errors, time and CPU added
    /// up, the latencies sorted.
    pub fn merged(parts: impl IntoIterator<Item = Stats>) -> Stats {
        let mut all = Stats::default();
        for part in parts {
            all.latencies.extend(part.latencies);
            all.errors += part.errors;
            for (kind, count) in part.error_kinds {
                *all.error_kinds.entry(kind).or_default() += count;
            }
            all.elapsed += part.elapsed;
            all.own_cpu_ms += part.own_cpu_ms;
            all.backends_cpu_ms += part.backends_cpu_ms;
        }
        all.latencies.sort_unstable();
        all
    }
}

/// Runs every op in its own task until `duration` has passed; each task
/// finishes the operation in flight. Latency is recorded for successes only.
/// With `cap`, the run also ends once that many operations have started.
/// `backends` are the server processes whose CPU the run is charged.
pub async fn drive<O: Op>(ops: Vec<O>, duration: Duration, backends: &[i32], cap: Option<usize>) -> Stats {
    let cpu_before = (own_cpu_ms(), backends_cpu_ms(backends));
    let start = Instant::now();
    let deadline = start + duration;
    let started = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            let started = started.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while Instant::now() < deadline
                    && cap.is_none_or(|cap| started.fetch_add(1, Ordering::Relaxed) < cap)
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
    let mut parts = Vec::new();
    let mut ops = Vec::new();
    for task in tasks {
        let (s, op) = task.await.expect("load task panicked");
        ops.push(op);
        parts.push(s);
    }
    let elapsed = start.elapsed();
    let own_cpu_ms = own_cpu_ms() - cpu_before.0;
    let backends_cpu_ms = backends_cpu_ms(backends) - cpu_before.1;
    drop(ops);
    Stats { elapsed, own_cpu_ms, backends_cpu_ms, ..Stats::merged(parts) }
}

/// `POST /v1/creds/{role}` on a fresh socket connection; non-200 is an error.
pub struct LessorCreate {
    pub client: Client,
    pub role: String,
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

/// `n` tasks' operations, spread round-robin over the nodes' `clients`.
pub fn lessor_ops(clients: &[Client], n: usize, role: &str) -> Vec<LessorCreate> {
    (0..n).map(|i| LessorCreate { client: nodes::pick(clients, i).clone(), role: role.to_string() }).collect()
}

// ---------------------------------------------------------------------------
// CPU

/// CPU time (user + system) of a process, in milliseconds, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
pub fn cpu_ms(pid: &str) -> f64 {
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
pub fn own_cpu_ms() -> f64 {
    cpu_ms("self")
}

/// The server processes serving a phase (the server is on this machine).
pub fn backends_cpu_ms(pids: &[i32]) -> f64 {
    pids.iter().map(|pid| cpu_ms(&pid.to_string())).sum()
}

/// The CPU of each of `pids`, to diff across a phase with [`cpu_since`]:
/// a pool may open connections during it.
pub fn cpu_by_pid(pids: impl IntoIterator<Item = i32>) -> BTreeMap<i32, f64> {
    pids.into_iter().map(|pid| (pid, cpu_ms(&pid.to_string()))).collect()
}

pub fn cpu_since(before: &BTreeMap<i32, f64>, after: &BTreeMap<i32, f64>) -> f64 {
    after.iter().map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0)).sum()
}

/// CPU of lessor's pool backends, by pid (the raw clients name themselves
/// `lessor-bench-raw`).
pub async fn lessor_backends_cpu(su: &tokio_postgres::Client, setup: &Setup) -> Result<BTreeMap<i32, f64>> {
    let rows = su
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname = $2 \
             AND application_name <> 'lessor-bench-raw'",
            &[&setup.names.admin, &setup.names.database],
        )
        .await?;
    Ok(cpu_by_pid(rows.iter().map(|r| r.get(0))))
}
