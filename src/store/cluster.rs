//! What a store shared by several nodes offers them (DESIGN §8): the
//! [`Cluster`] trait the PostgreSQL store implements, and what it tells a
//! node ([`NodeInfo`], [`Notice`]). The broker's side (heartbeat,
//! listener, sweep) is in `broker/cluster.rs`.

use std::fmt::Debug;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use crate::events::Event;
use crate::lease::LeaseId;

/// How long past due another node's lease must be before this node
/// sweeps for it: its own node normally revokes it first.
pub const TAKEOVER_GRACE: StdDuration = StdDuration::from_secs(1);

/// A node as the store knows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub host: Option<String>,
    pub pid: Option<i32>,
    pub version: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The last heartbeat, by the store's clock.
    pub last_heartbeat: DateTime<Utc>,
    /// How long ago that was, by the store's clock.
    pub heartbeat_age_ms: i64,
    /// Whether the heartbeat is recent enough for the node to count as alive.
    pub alive: bool,
}

/// What a node hears from the store about the others.
#[derive(Debug)]
pub enum Notice {
    /// Listening (again): whatever was sent while not listening is lost.
    Connected,
    /// A lease of `node` is active until `expires_at` (just issued or
    /// renewed; `previous` is the expiry it had).
    Scheduled { id: LeaseId, node: String, expires_at: DateTime<Utc>, previous: DateTime<Utc> },
    /// An event another node published.
    Event { node: String, event: Event },
}

/// The store's side of a cluster of nodes.
#[async_trait]
pub trait Cluster: Send + Sync + Debug {
    /// This node's id (`server.node_id`).
    fn node(&self) -> &str;

    /// How old a heartbeat may be before its node counts as dead.
    fn node_timeout(&self) -> StdDuration;

    /// Records that this node is alive.
    async fn heartbeat(&self) -> Result<(), StoreError>;

    /// Every node that has used the store, with its last heartbeat.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;

    /// Claims for this node up to `limit` leases that are due by more than
    /// `grace` and that no live node works on: expired active leases,
    /// revocations whose retry is due, and `pending` leases of dead nodes.
    /// Rows another node is claiming at the same instant are skipped
    /// (`FOR UPDATE SKIP LOCKED`), never waited for.
    async fn claim_due(&self, grace: StdDuration, limit: usize) -> Result<Vec<LeaseId>, StoreError>;

    /// Listens to the store until `shutdown`, reconnecting when the
    /// connection is lost; every (re)connection is a [`Notice::Connected`].
    fn listen(&self, shutdown: CancellationToken) -> mpsc::Receiver<Notice>;

    /// Tells the other nodes of `event`.
    async fn publish(&self, event: &Event) -> Result<(), StoreError>;
}
