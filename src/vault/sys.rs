//! What Vault's clients ask of the server itself: `sys/health`, the
//! token's own lookup (Agent's `token_file` auto-auth reads it), and the
//! KV preflight of `sys/internal/ui/mounts/…`.
//!
//! There are no tokens: the caller is the socket peer. `lookup-self`
//! answers a token that never expires and carries the policies the peer
//! matches, so clients that insist on a token are content.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{vault_time, Envelope};
use crate::http::{caller, AppState};

/// `GET sys/health`: 200 when ready, 503 while starting, while the audit
/// log cannot be written or the store cannot be reached (the native
/// `GET /v1/health` says which).
pub(super) async fn health(State(state): State<AppState>) -> Response {
    let ready = state.broker.is_ready()
        && state.audit.failure().is_none()
        && state.broker.store.check().await.is_ok();
    let body = json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": chrono::Utc::now().timestamp(),
        "version": concat!("lessor-", env!("CARGO_PKG_VERSION")),
        "cluster_name": "lessor",
        // One node, no cluster: a fixed id, so it never looks like a change.
        "cluster_id": uuid::Uuid::nil().to_string(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// `GET auth/token/lookup-self`: the caller as a token. `id` echoes the
/// `X-Vault-Token` sent (it is the client's own value, and means nothing
/// here), or names the peer's uid when none was; `policies` are the
/// `[[policies]]` the peer matches.
pub(super) async fn lookup_self(request: Request) -> Response {
    let caller = caller(request.extensions());
    let who = caller.identity();
    // Agent takes `id` as the token for what follows and needs it non-empty.
    let token = request
        .headers()
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map_or_else(|| format!("lessor-peer-uid-{}", who.uid), str::to_string);
    let mut policies: Vec<&str> = caller.policy_names();
    if caller.is_admin() {
        policies.push("admin");
    }
    let display_name = format!("peer-{}", who.user.clone().unwrap_or_else(|| format!("uid-{}", who.uid)));
    let data = json!({
        "accessor": "",
        "creation_time": chrono::Utc::now().timestamp(),
        "creation_ttl": 0,
        "display_name": display_name,
        "entity_id": "",
        "expire_time": null,
        "explicit_max_ttl": 0,
        "id": token,
        "issue_time": vault_time(chrono::Utc::now()),
        "meta": null,
        "num_uses": 0,
        "orphan": true,
        "path": "auth/token/create",
        "policies": policies,
        "renewable": false,
        "ttl": 0,
        "type": "service",
    });
    Envelope { data: Some(data), ..Envelope::default() }.into_response()
}

/// `GET sys/internal/ui/mounts/…`: 404, which Vault's clients take to mean
/// "not a KV version 2 mount": they then read the path as it is.
pub(super) async fn no_mount_info() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "errors": [] }))).into_response()
}
