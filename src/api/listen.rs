//! The socket's accept loop: no local user can stall the daemon.
//!
//! - A header timeout: a client that has not sent a request's headers
//!   within `server.header_timeout` is closed, and so is a connection idle
//!   that long between requests (hyper's `header_read_timeout`, which runs
//!   from the moment a connection waits for a request).
//! - A global cap on open connections (`server.max_connections`), of which
//!   the last `server.admin_connections` only root and the daemon's own
//!   user may take, so the socket always has room for them.
//! - A cap per uid (`server.max_connections_per_uid`), counted apart for
//!   callers in the daemon's namespaces and elsewhere, so root in a
//!   container cannot use up the host's root's share (and a user making
//!   namespaces of its own gets one more share, not one per namespace).
//!   It is counted at accept, before anything of the peer is read.
//! - Accept errors (out of descriptors) back off instead of spinning.
//!
//! A refused connection gets a one-line JSON answer and is closed at once;
//! the peer's identity is read before any byte of a request
//! ([`PeerInfo::accept`]). Revocations never go through the socket, and the
//! caps keep the daemon's descriptors well below its limit, so backend
//! connections (revocation's included) can always be opened.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::PeerInfo;
use crate::config::ServerConfig;
use crate::containers::Containers;
use crate::http::PerKey;
use crate::policy::identity::namespaces_differ;
use crate::policy::rules::current_uid;

/// How long shutdown waits for connections still answering.
const DRAIN: Duration = Duration::from_secs(30);

/// The socket's limits, from `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub admin_connections: usize,
    pub per_uid: usize,
}

impl Limits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_timeout: server.header_timeout.as_std(),
            max_connections: server.max_connections,
            admin_connections: server.admin_connections,
            per_uid: server.max_connections_per_uid,
        }
    }
}

/// Open connections, in all and per (uid, in the daemon's namespaces).
#[derive(Debug)]
struct Counts {
    open: AtomicUsize,
    per_uid: Arc<PerKey<(u32, bool)>>,
}

/// One open connection; counted until dropped.
struct Slot(Arc<Counts>);

impl Slot {
    fn take(counts: &Arc<Counts>) -> Self {
        crate::metrics::connections(counts.open.fetch_add(1, Ordering::Relaxed) + 1);
        Self(counts.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::connections(self.0.open.fetch_sub(1, Ordering::Relaxed) - 1);
    }
}

/// Serves `router` on `listener` until `shutdown`, then waits (a while) for
/// the connections still answering.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    limits: Limits,
    containers: Option<Arc<Containers>>,
    shutdown: CancellationToken,
) {
    let counts = Arc::new(Counts { open: AtomicUsize::new(0), per_uid: PerKey::new(limits.per_uid) });
    let graceful = GracefulShutdown::new();
    let daemon_uid = current_uid();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                // Out of descriptors, most likely: the connection waits in
                // the backlog; try again shortly rather than spin.
                crate::metrics::connection_refused("accept_error");
                rate_limited_warn(&format!("cannot accept a connection: {e}; retrying in {backoff:?}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (uid, pid) = match stream.peer_cred() {
            Ok(cred) => (cred.uid(), cred.pid()),
            Err(_) => (u32::MAX, None),
        };
        let open = counts.open.load(Ordering::Relaxed);
        let reserved = uid == 0 || uid == daemon_uid;
        if open >= limits.max_connections
            || (!reserved && open >= limits.max_connections - limits.admin_connections)
        {
            crate::metrics::connection_refused("max_connections");
            rate_limited_warn(&format!(
                "refusing a connection of uid {uid}: {open} connections open (server.max_connections)"
            ));
            refuse(
                stream,
                503,
                "too_many_connections",
                "the daemon has too many connections open; try again",
            );
            continue;
        }
        // Counted before anything is read of the peer, so a flood costs a
        // look-up or two per connection, never a blocking read.
        let elsewhere = pid.map(namespaces_differ);
        let key = (uid, matches!(elsewhere, Some(None)));
        let Some(uid_slot) = counts.per_uid.take(key) else {
            crate::metrics::connection_refused("per_uid");
            rate_limited_warn(&format!(
                "refusing a connection of uid {uid}: it has {} open (server.max_connections_per_uid)",
                limits.per_uid
            ));
            let message = format!("uid {uid} has {} connections open, the most one uid may", limits.per_uid);
            refuse(stream, 429, "too_many_connections", &message);
            continue;
        };
        let slot = Slot::take(&counts);
        let watcher = graceful.watcher();
        let (router, limits, containers) = (router.clone(), limits.clone(), containers.clone());
        tokio::spawn(async move {
            let peer = PeerInfo::accept(&stream, elsewhere.flatten(), containers.as_deref()).await;
            let service = router.map_request(move |mut request: axum::http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer.clone()));
                request
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(connection).await {
                debug!(error = %e, "connection ended with an error");
            }
            drop((uid_slot, slot));
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        warn!("connections still open {DRAIN:?} after shutdown began; closing them");
    }
}

/// Answers a connection that is not served: one JSON error, then closed.
/// Never waits: a peer that does not read loses the answer.
fn refuse(stream: UnixStream, status: u16, code: &str, message: &str) {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let reason = if status == 429 { "Too Many Requests" } else { "Service Unavailable" };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// A warning at most every 10 s: a flood must not flood the log too.
fn rate_limited_warn(message: &str) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    if now_due(&LAST) {
        warn!("{message} (further such warnings held back for 10 s; see lessor_connections_refused_total)");
    }
}

/// Whether 10 s have passed since `last` (epoch seconds) said yes; if so,
/// `last` is now. For warnings a flood of connections would repeat.
pub(crate) fn now_due(last: &AtomicI64) -> bool {
    let now = chrono::Utc::now().timestamp();
    let then = last.load(Ordering::Relaxed);
    now - then >= 10 && last.compare_exchange(then, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}
