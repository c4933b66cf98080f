//! The socket API: HTTP/1.1 + JSON over a Unix socket (DESIGN §5).
//!
//! Handlers are thin: they parse, call the [`Broker`] and shape the answer.
//! What every request needs (the caller's identity from `SO_PEERCRED`, a
//! timeout, a body limit, a log line with uid and pid) lives in layers
//! around them. This module holds the native routes, the [`router`] that
//! serves them with the Vault-compatible ones ([`crate::vault`]) and the
//! guard layer, and the socket's accept loop and peer identity; what both
//! route sets share (state, errors, extractors, audit, wire types) is
//! [`crate::http`]'s.
//!
//! [`Broker`]: crate::broker::Broker

mod admin;
mod leases;
pub mod listen;
pub(crate) mod peer;
mod statics;
mod status;
mod watch;

use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tracing::info;

use crate::config::Duration;
use crate::http::{audited, caller, read_json, wire, ApiError, Path};
use crate::lease::LeaseId;

pub use crate::http::AppState;
use admin::{revoke_sessions, tidy};
use leases::{get_lease, lease_action, list_leases, revoke_lease, revoke_prefix};
pub use leases::{list_query, ListQuery, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
pub use peer::PeerInfo;

type ApiResult = Result<Response, ApiError>;

/// Builds the router with its layers.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/v1/health", get(status::health))
        .route("/v1/metrics", get(status::metrics))
        .route("/v1/plugins", get(status::plugins))
        .route("/v1/creds/{role}", post(issue))
        .route("/v1/leases", get(list_leases))
        .route("/v1/leases/revoke", post(revoke_prefix))
        .route("/v1/roles/{role}/revoke-sessions", post(revoke_sessions))
        .route("/v1/tidy", post(tidy))
        .route("/v1/static/{name}", get(statics::static_get))
        .route("/v1/static/{name}/rotate", post(statics::static_rotate))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/connections/{name}/rotate-root", post(statics::rotate_root))
        .route("/v1/leases/{*rest}", get(get_lease).delete(revoke_lease).post(lease_action));
    if state.vault_api {
        routes = routes.merge(crate::vault::routes());
    }
    let routes = routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard));
    // Outside the guard, so its refusals (audit, timeout) are re-shaped too.
    let routes =
        if state.vault_api { routes.layer(middleware::from_fn(crate::vault::shape_errors)) } else { routes };
    routes.with_state(state)
}

/// Logs every request with the caller's uid and pid, bounds its time, and
/// counts it by route template and status.
async fn guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let who = peer.identity();
    let caller = state.policies.caller(who.clone());
    let mut request = request;
    request.extensions_mut().insert(caller.clone());
    let audited = audited::is_audited(route.as_deref());
    // Still the process, and the program, that connected?
    let changed = peer.recheck().err();
    let response = match audited::ready(&state.audit, audited, &caller, &method, &path).await {
        Err(refused) => refused,
        Ok(()) if changed.is_some() => {
            let why = changed.as_deref().unwrap_or_default();
            let mut refused = ApiError::new(StatusCode::FORBIDDEN, "identity_changed", why).into_response();
            // The connection is closed after this answer: it has no caller any more.
            refused.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            refused
        }
        Ok(()) => match tokio::time::timeout(state.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long")
                .into_response(),
        },
    };
    let response = if audited {
        audited::record(&state, &caller, &method, route.as_deref(), &path, response).await
    } else {
        response
    };
    crate::metrics::request(route.as_deref(), response.status().as_u16());
    info!(
        %method,
        path,
        status = response.status().as_u16(),
        uid = peer.uid,
        user = who.user.as_deref().unwrap_or("?"),
        pid = peer.pid,
        exe = who.exe.as_deref().unwrap_or("?"),
        exe_replaced = who.exe_deleted,
        unit = who.systemd_unit.as_deref().unwrap_or("-"),
        user_unit = who.user_unit.as_deref().unwrap_or("-"),
        container = who.container_id.as_deref().map_or("-", |id| &id[..12]),
        container_name = who.container.as_ref().map_or("-", |c| c.name.as_str()),
        image = who.container.as_ref().map_or("-", |c| c.image.as_str()),
        pod = who.container.as_ref().and_then(|c| c.pod()).as_deref().unwrap_or("-"),
        elsewhere = who.confined.as_deref().unwrap_or("-"),
        not_admin = caller.not_admin_because().unwrap_or("-"),
        identity_changed = changed.as_deref().unwrap_or("-"),
        policies = caller.policy_names().join(","),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

fn parse_duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, ApiError> {
    text.map(|t| t.parse::<Duration>().map_err(|e| ApiError::bad_request(format!("{field}: {e}"))))
        .transpose()
}

#[doc(hidden)] // pub for the fuzz targets (fuzz/)
pub fn parse_lease_id(raw: &str) -> Result<LeaseId, ApiError> {
    LeaseId::parse(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{raw:?} is not a lease id (expected ROLE/ID, letters, digits, '_' and '-')"
        ))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    ttl: Option<String>,
}

async fn issue(State(state): State<AppState>, Path(role): Path<String>, request: Request) -> ApiResult {
    let caller = caller(request.extensions());
    let request_key = request.headers().get("idempotency-key").cloned();
    let body: IssueBody = read_json(request.into_body(), state.max_body_bytes).await?;
    let ttl = parse_duration("ttl", body.ttl.as_deref())?;
    let key = match request_key {
        Some(key) => Some(
            key.to_str()
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?,
        ),
        None => None,
    };
    let issued = match key {
        Some(key) => state.broker.issue_idempotent(role, ttl, caller, &key).await?,
        None => state.broker.issue_detached(role, ttl, caller).await?,
    };
    let body = wire::issued(&issued).ok_or_else(|| wire::unshown("API"))?;
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(audited::Issued(issued.lease.id.clone()));
    Ok(response)
}
