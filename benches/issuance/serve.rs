//! `lessor serve` as a process of its own, for phases `scale`, `outage` and
//! `window` (its memory is its own, and it starts on a store the phase
//! prepared):
//! started on a config, awaited, loaded with issuing clients, stopped.
//!
//! `LESSOR_BENCH_LESSOR_BIN` names another build of lessor to start
//! instead, to compare two on the same store.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lessor::client::Client;
use tokio::task::JoinHandle;

use crate::load::{LessorCreate, Op, Stats};
use crate::report::ms;
use crate::Result;

/// A running `lessor serve` whose socket is `lessor.sock` in its folder.
pub struct Serve {
    child: tokio::process::Child,
    pub pid: u32,
    pub started: Instant,
    pub client: Client,
    log: PathBuf,
}

impl Serve {
    /// Starts `lessor serve --config config`, its log in `dir/serve.log`.
    pub fn start(dir: &Path, config: &Path) -> Result<Self> {
        let log = dir.join("serve.log");
        let binary = std::env::var_os("LESSOR_BENCH_LESSOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_lessor").into());
        let started = Instant::now();
        let child = tokio::process::Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("lessor serve exited at once")?;
        Ok(Self { child, pid, started, client: Client::new(dir.join("lessor.sock")), log })
    }

    /// Waits for the first answer (any status: the socket is bound and
    /// serving); how long after the start it came.
    pub async fn answering(&mut self, deadline: Instant) -> Result<Duration> {
        loop {
            if self.client.health().await.is_ok() {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("lessor serve exited with {status} before answering").into());
            }
            if Instant::now() > deadline {
                return Err("lessor serve did not answer within the deadline".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGTERM: a clean shutdown, within 30 s or killed. After a failed
    /// measurement the end of the daemon's log is printed.
    pub async fn stop(mut self, failed: bool) {
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        if failed {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "lessor serve's log (its end):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// One issuance: when it started, how long it took, whether it succeeded.
type Sample = (Instant, Duration, bool);

/// N clients issuing `grp` credentials in a loop until finished.
pub struct Issuers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Sample>>>,
}

impl Issuers {
    pub fn start(client: &Client, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut op = LessorCreate { client, role: "grp".to_string() };
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let ok = op.run().await.is_ok();
                        samples.push((t0, t0.elapsed(), ok));
                    }
                    samples
                })
            })
            .collect();
        Self { stop, tasks }
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops the clients; their issuances split by start time, those
    /// started before `boundary` and those after, latencies sorted (each
    /// side's `elapsed` is the caller's to set).
    pub async fn finish(self, boundary: Instant) -> Result<(Stats, Stats)> {
        self.stop.store(true, Ordering::Relaxed);
        let (mut before, mut after) = (Stats::default(), Stats::default());
        for task in self.tasks {
            for (t0, latency, ok) in task.await? {
                let stats = if t0 < boundary { &mut before } else { &mut after };
                if ok {
                    stats.latencies.push(latency);
                } else {
                    stats.errors += 1;
                }
            }
        }
        before.latencies.sort_unstable();
        after.latencies.sort_unstable();
        Ok((before, after))
    }
}

/// One line of issuance figures, under `indent`.
pub fn print_latency(indent: &str, label: &str, s: &Stats) {
    println!(
        "{indent}issuance {label:<16} {:>6} ok  {:>7.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {}",
        s.ok(),
        if s.elapsed.is_zero() { 0.0 } else { s.throughput() },
        ms(s.percentile(50.0)),
        ms(s.percentile(99.0)),
        ms(s.max()),
        s.errors
    );
}
