//! `GET /v1/watch`: a stream of newline-delimited JSON events for the
//! caller. It opens with a `snapshot` of everything the caller may read
//! (every static account's state, its own leases), then sends `rotated`,
//! `lease_expiring` and `lease_revoked` as they happen, and a `heartbeat`
//! line when idle so proxies and clients can tell a quiet stream from a
//! dead one. Events carry the item's full state and never a secret; a
//! watcher that fell behind gets `lagged` and a fresh snapshot.

use std::convert::Infallible;
use std::time::Duration as StdDuration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use lessor_client::WatchEvent;

use super::DEFAULT_LIST_LIMIT;
use crate::broker::Caller;
use crate::events::Event;
use crate::http::{caller, ApiError, AppState};

/// How often an idle stream says it is alive.
const HEARTBEAT: StdDuration = StdDuration::from_secs(15);

pub(super) async fn watch(State(state): State<AppState>, request: Request) -> Response {
    let caller = caller(request.extensions());
    let Some(slot) = state.watchers.take(caller.uid) else {
        let message = format!(
            "{} has {} watch streams open, the most one uid may (server.max_watches_per_uid)",
            caller.who(),
            state.watchers.cap()
        );
        return ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "too_many_watches", message)
            .into_response();
    };
    let (lines, out) = mpsc::channel::<Bytes>(64);
    // Subscribed before the snapshot is read: nothing falls between them.
    let events = state.events.subscribe();
    tokio::spawn(async move {
        feed(state, caller, events, lines).await;
        drop(slot);
    });
    let body = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|line| (Ok::<_, Infallible>(line), out))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

/// Writes the caller's events until it goes away or the daemon stops.
async fn feed(
    state: AppState,
    caller: Caller,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    lines: mpsc::Sender<Bytes>,
) {
    let send = |event: WatchEvent| {
        let mut line = serde_json::to_string(&event).expect("events serialize");
        line.push('\n');
        lines.send(Bytes::from(line))
    };
    if send(snapshot(&state, &caller).await).await.is_err() {
        return;
    }
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        let line = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => match event_for(&event, &caller) {
                    Some(line) => line,
                    None => continue,
                },
                Err(RecvError::Lagged(missed)) => {
                    if send(WatchEvent::Lagged { missed }).await.is_err() {
                        return;
                    }
                    snapshot(&state, &caller).await
                }
                Err(RecvError::Closed) => return,
            },
            _ = heartbeat.tick() => WatchEvent::Heartbeat { at: Utc::now() },
            () = lines.closed() => return,
            () = state.shutdown.cancelled() => return,
        };
        if send(line).await.is_err() {
            return;
        }
    }
}

/// Everything the caller may read, now: every static account it may read,
/// and the first page of its leases (as `GET /v1/leases` gives it).
async fn snapshot(state: &AppState, caller: &Caller) -> WatchEvent {
    let mut statics = Vec::new();
    for name in state.rotator.names().filter(|name| caller.may_read_static(name).is_ok()) {
        statics.push(match state.rotator.get(name, caller).await {
            Ok(view) => serde_json::to_value(view.without_secret()).expect("a static account serializes"),
            Err(e) => json!({ "name": name, "version": 0, "error": e.to_string() }),
        });
    }
    let leases = match state.broker.list("", caller, None, DEFAULT_LIST_LIMIT).await {
        Ok((leases, _)) => leases,
        Err(_) => Vec::new(),
    };
    WatchEvent::Snapshot { at: Utc::now(), statics, leases }
}

/// The event as the caller sees it, or `None` when it is about something
/// the caller may not read.
fn event_for(event: &Event, caller: &Caller) -> Option<WatchEvent> {
    let visible = match event {
        Event::Rotated(rotation) => caller.may_read_static(&rotation.account).is_ok(),
        Event::LeaseExpiring(lease) | Event::LeaseRevoked(lease) => caller.may_touch(lease),
    };
    visible.then(|| WatchEvent::from(event))
}
