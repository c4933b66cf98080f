//! The PostgreSQL store's side of a cluster of nodes (see
//! [`crate::store::cluster`]): the node lock and heartbeat, lease claims, the sweep
//! for due work, and `LISTEN/NOTIFY`.
//!
//! Heartbeats and claims are measured by the store's clock
//! (`lessor_now_ms()`), so nodes whose clocks differ agree on who is alive
//! and whose claim has lapsed. Lease deadlines (`expires_at`, `retry_at`)
//! are the nodes' own clocks, as everywhere else.

use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{time, PostgresStore};
use crate::events::Event;
use crate::lease::LeaseId;
use crate::store::cluster::{Cluster, NodeInfo, Notice};
use crate::store::StoreError;

/// The advisory lock class of node ids (the key within it is the id's
/// hash): the writer's session holds its node's lock while the daemon
/// runs, so two live daemons never share a `node_id`. A daemon that died
/// lost its session and with it the lock: it can restart at once.
const NODE_LOCK_CLASS: i32 = 0x6c65_7373;

/// The longest a claim lasts even while its holder heartbeats: longer
/// than any bounded backend call, so a live node never loses a claim it
/// is using, and a forgotten one still lapses.
pub(super) const CLAIM_TTL_MS: i64 = 120_000;

/// Who may claim a lease (`l`), for node `$2` with node timeout `$3` ms:
/// nobody holds it, this node does, or the holder's claim lapsed or the
/// holder is dead; and a `pending` lease only its issuing node, or anyone
/// once that node is dead.
pub(super) const CLAIMABLE: &str =
    "(l.claimed_by IS NULL OR l.claimed_by = $2 OR l.claim_until < lessor_now_ms() \
       OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = l.claimed_by \
                      AND n.heartbeat_at >= lessor_now_ms() - $3)) \
     AND (l.state <> 'pending' OR l.node = $2 \
       OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = l.node \
                      AND n.heartbeat_at >= lessor_now_ms() - $3))";

/// Takes this node's lock for the writer's session, or says who holds it.
pub(super) async fn take_node_lock(client: &tokio_postgres::Client, node: &str) -> Result<(), String> {
    let taken: bool = client
        .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&NODE_LOCK_CLASS, &node])
        .await
        .map_err(|e| format!("cannot lock node id {node:?}: {e}"))?
        .get(0);
    if taken {
        return Ok(());
    }
    let holder = client
        .query_opt(
            "SELECT a.application_name, a.client_addr::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid \
             AND l.objid = (hashtext($2)::bigint & 4294967295)::oid AND l.objsubid = 2 AND l.granted LIMIT 1",
            &[&NODE_LOCK_CLASS, &node],
        )
        .await
        .ok()
        .flatten()
        .map(|row| {
            let name: Option<String> = row.get(0);
            let addr: Option<String> = row.get(1);
            format!(" ({} from {})", name.unwrap_or_default(), addr.unwrap_or_else(|| "a local socket".into()))
        })
        .unwrap_or_default();
    Err(format!(
        "node_id {node:?} is in use by another live lessor on this store{holder}; \
         give each host its own server.node_id"
    ))
}

impl PostgresStore {
    pub(super) fn timeout_ms(&self) -> i64 {
        self.timeout.as_millis() as i64
    }
}

#[async_trait]
impl Cluster for PostgresStore {
    fn node(&self) -> &str {
        &self.node
    }

    fn node_timeout(&self) -> StdDuration {
        self.timeout
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let pid = std::process::id() as i32;
        self.query(
            "heartbeat",
            "INSERT INTO nodes (node_id, host, pid, version, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, lessor_now_ms()) \
             ON CONFLICT (node_id) DO UPDATE SET host = $2, pid = $3, version = $4, started_at = $5, \
             heartbeat_at = lessor_now_ms()",
            &[&self.node, &self.host, &pid, &env!("CARGO_PKG_VERSION"), &self.started_at],
        )
        .await
        .map(drop)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let rows = self
            .query(
                "list nodes",
                "SELECT node_id, host, pid, version, started_at, heartbeat_at, lessor_now_ms() \
                 FROM nodes ORDER BY node_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let heartbeat: i64 = row.get(5);
                let store_now: i64 = row.get(6);
                let age = store_now - heartbeat;
                Ok(NodeInfo {
                    node_id: row.get(0),
                    host: row.get(1),
                    pid: row.get(2),
                    version: row.get(3),
                    started_at: time(row.get(4)).map_err(|e| self.failed("list nodes", e))?,
                    last_heartbeat: time(heartbeat).map_err(|e| self.failed("list nodes", e))?,
                    heartbeat_age_ms: age,
                    alive: age <= self.timeout_ms(),
                })
            })
            .collect()
    }

    async fn claim_due(&self, grace: StdDuration, limit: usize) -> Result<Vec<LeaseId>, StoreError> {
        let due_before =
            (Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default()).timestamp_millis();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "WITH due AS ( \
               SELECT l.id FROM leases l \
               WHERE l.state <> 'revoked' \
                 AND ((l.state = 'active' AND l.expires_at <= $1) \
                   OR (l.state IN ('revoking', 'irrevocable') AND coalesce(l.retry_at, 0) <= $1) \
                   OR (l.state = 'pending' AND l.node <> $2)) \
                 AND l.claimed_by IS DISTINCT FROM $2 AND {CLAIMABLE} \
               LIMIT $4 FOR UPDATE OF l SKIP LOCKED) \
             UPDATE leases SET claimed_by = $2, claim_until = lessor_now_ms() + $5 \
             FROM due WHERE leases.id = due.id RETURNING leases.id"
        );
        let rows = self
            .query(
                "sweep for due leases",
                &sql,
                &[&due_before, &self.node, &self.timeout_ms(), &limit, &CLAIM_TTL_MS],
            )
            .await?;
        Ok(rows.iter().map(|row| LeaseId::from_store(row.get(0))).collect())
    }

    fn listen(&self, shutdown: CancellationToken) -> mpsc::Receiver<Notice> {
        let (sender, notices) = mpsc::channel(4096);
        let (config, tls, location) = (self.config.clone(), self.tls.clone(), self.location.clone());
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match listen_once(&config, &tls, &sender, &shutdown).await {
                    Ok(()) => return,
                    Err(e) => {
                        failures += 1;
                        let wait = StdDuration::from_millis(250 * 2u64.pow(failures.min(5)));
                        warn!(store = %location, error = %e, retry_in_ms = wait.as_millis() as u64, "not listening to the store; reconnecting");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
        });
        notices
    }

    async fn publish(&self, event: &Event) -> Result<(), StoreError> {
        let payload = serde_json::json!({ "node": self.node, "event": event }).to_string();
        self.query("publish an event", "SELECT pg_notify('lessor_events', $1)", &[&payload]).await.map(drop)
    }
}

/// Listens on one connection until it is lost (an error) or `shutdown`
/// or nobody reads the notices any more (`Ok`).
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &lessor_postgres::PgTls,
    sender: &mpsc::Sender<Notice>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let (client, mut notifications) =
        tls.connect_listening(config).await.map_err(|e| super::connect_error(&e))?;
    client.batch_execute("LISTEN lessor_leases; LISTEN lessor_events").await.map_err(|e| e.to_string())?;
    if sender.send(Notice::Connected).await.is_err() {
        return Ok(());
    }
    loop {
        let notification = tokio::select! {
            n = notifications.recv() => n.ok_or("the listening connection was lost")?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let notice = match notification.channel() {
            "lessor_leases" => lease_notice(notification.payload()),
            "lessor_events" => event_notice(notification.payload()),
            _ => None,
        };
        match notice {
            Some(notice) => {
                if sender.send(notice).await.is_err() {
                    return Ok(());
                }
            }
            None => debug!(channel = notification.channel(), "unreadable notification ignored"),
        }
    }
}

/// `"<state> <id> <node> <expires_at> <old expires_at>"` from the
/// `leases_changed` trigger: only `active` ones since migration 5 (a node
/// of an older version may still announce an ended lease, which is
/// ignored).
fn lease_notice(payload: &str) -> Option<Notice> {
    let mut parts = payload.split(' ');
    let (state, id, node) = (parts.next()?, parts.next()?, parts.next()?);
    let at = |ms: Option<&str>| -> Option<DateTime<Utc>> { time(ms?.parse().ok()?).ok() };
    let (expires_at, previous) = (at(parts.next())?, at(parts.next())?);
    let (id, node) = (LeaseId::from_store(id.to_string()), node.to_string());
    match state {
        "active" => Some(Notice::Scheduled { id, node, expires_at, previous }),
        _ => None,
    }
}

/// `{"node": …, "event": …}` from [`Cluster::publish`].
fn event_notice(payload: &str) -> Option<Notice> {
    #[derive(serde::Deserialize)]
    struct Published {
        node: String,
        event: Event,
    }
    let published: Published = serde_json::from_str(payload).ok()?;
    Some(Notice::Event { node: published.node, event: published.event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_notices_are_read_back() {
        let notice = lease_notice("active app/abc web-1 2000 1000").unwrap();
        assert!(matches!(notice, Notice::Scheduled { ref node, expires_at, previous, .. }
            if node == "web-1" && expires_at.timestamp_millis() == 2000 && previous.timestamp_millis() == 1000));
        assert!(lease_notice("revoked app/abc web-1 2000 2000").is_none());
        assert!(lease_notice("pending app/abc web-1 2000 2000").is_none());
        assert!(lease_notice("active app/abc").is_none());
    }
}
