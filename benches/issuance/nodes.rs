//! `--nodes N`: the in-process daemons the lessor lines run against.
//!
//! Node `i` (1 to N) is `lessor::daemon::start` with `node_id =
//! "bench-<i>"` and its own temp folder (socket, SQLite store, audit log),
//! all on the bench's tokio runtime and one shutdown token. N > 1 needs
//! `--store postgres`, so every node keeps its leases in the same
//! PostgreSQL store: each revokes its own leases when they fall due. N = 1
//! is the same shape with one node.
//!
//! The load tasks are spread over the nodes round-robin ([`pick`]). The
//! daemons share the process's one metrics recorder (`lessor::metrics::
//! install` returns the same handle to every later call), so a scrape of
//! any node reports the counters and histograms of all of them.

use super::*;

pub struct Nodes {
    shutdown: CancellationToken,
    running: Vec<lessor::daemon::Running>,
    clients: Vec<Client>,
    /// Each node's folder, removed once the nodes have stopped.
    dirs: Vec<tempfile::TempDir>,
}

impl Nodes {
    /// Starts `args.nodes` daemons one after another (the first creates the
    /// store's schema); on an error, stops those already started.
    pub async fn start(args: &Args, setup: &Setup) -> Result<Self> {
        let mut nodes = Self {
            shutdown: CancellationToken::new(),
            running: Vec::new(),
            clients: Vec::new(),
            dirs: Vec::new(),
        };
        for i in 1..=args.nodes {
            let node = format!("bench-{i}");
            let dir = tempfile::tempdir()?;
            let started = async {
                let config = lessor::config::load_str(
                    &lessor_config(setup, dir.path(), args, &node),
                    "(bench config)",
                )
                .map_err(|e| format!("config: {e}"))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    lessor::daemon::start(config, nodes.shutdown.clone()).await?,
                )
            }
            .await;
            match started {
                Ok(running) => {
                    nodes.clients.push(Client::new(running.socket.clone()));
                    nodes.running.push(running);
                    nodes.dirs.push(dir);
                }
                Err(e) => {
                    nodes.stop().await;
                    return Err(format!("node {node}: {e}").into());
                }
            }
        }
        Ok(nodes)
    }

    /// One client per node, in node order.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Stops every node and waits for each to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for running in self.running {
            running.stopped().await;
        }
        drop(self.dirs);
    }
}

/// The client of load task `task`: the nodes in turn.
pub fn pick(clients: &[Client], task: usize) -> &Client {
    &clients[task % clients.len()]
}
