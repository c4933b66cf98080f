//! The daemon's own state: `GET /v1/health` (readiness, the store, the
//! audit log and, with a shared store, every node's heartbeat) and
//! `GET /v1/metrics`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::http::{caller, ApiError, AppState};

/// Readiness for anyone; the details (the store's and the audit log's
/// errors, the nodes of a shared store) for admins and callers granted
/// `metrics` only.
pub(super) async fn health(State(state): State<AppState>, request: Request) -> Response {
    let details = caller(request.extensions()).may_read_metrics().is_ok();
    let audit_failure = state.audit.failure();
    let store_failure = state.broker.store.check().await.err().map(|e| e.to_string());
    let ready = state.broker.is_ready() && audit_failure.is_none() && store_failure.is_none();
    let status = match (&audit_failure, &store_failure, state.broker.is_ready()) {
        (Some(_), _, _) => "audit_failing",
        (None, Some(_), _) => "degraded",
        (None, None, true) => "ready",
        (None, None, false) => "starting",
    };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if !details {
        return (code, Json(json!({ "status": status }))).into_response();
    }
    let mut body = json!({ "status": status, "scheduled_leases": state.broker.scheduled() });
    if let Some(path) = state.audit.path() {
        body["audit"] = json!({ "path": path, "ok": audit_failure.is_none(), "error": audit_failure });
    }
    if let Some(error) = store_failure {
        body["store"] = json!({ "ok": false, "error": error });
    }
    body["plugins"] = json!(state.plugins.statuses());
    if let Some(cluster) = state.broker.store.cluster() {
        body["node"] = json!(cluster.node());
        // Every node that has used the shared store, with its last heartbeat.
        match cluster.nodes().await {
            Ok(nodes) => body["nodes"] = json!(nodes),
            Err(e) => body["nodes_error"] = json!(e.to_string()),
        }
    }
    (code, Json(body)).into_response()
}

/// `GET /v1/plugins`: every plugin in use, built-in and external, with
/// its state; for admins and callers granted `metrics`.
pub(super) async fn plugins(State(state): State<AppState>, request: Request) -> Response {
    if let Err(denied) = caller(request.extensions()).may_read_metrics() {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.message).into_response();
    }
    Json(json!({ "plugins": state.plugins.statuses() })).into_response()
}

/// The Prometheus text: for admins and callers granted `metrics`.
pub(super) async fn metrics(State(state): State<AppState>, request: Request) -> Response {
    if let Err(denied) = caller(request.extensions()).may_read_metrics() {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.message).into_response();
    }
    let text = match &state.metrics {
        Some(exporter) => exporter.render(&state.broker).await,
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
