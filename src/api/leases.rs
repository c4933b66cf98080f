//! The lease routes: list (`GET /v1/leases`, paginated), get, renew and
//! revoke one lease, and revoke every lease under a prefix.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use lessor_client::Renewed;

use super::{parse_duration, parse_lease_id, ApiResult};
use crate::broker::{BrokerError, Revocation};
use crate::http::{audited, caller, detached, read_json, serde_urlencoded_pairs, ApiError, AppState, Path};
use crate::lease::LeaseId;

/// How many leases one page of `GET /v1/leases` holds unless `limit` says.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// The most one page may hold.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// The query of `GET /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only ids starting with this.
    pub prefix: String,
    /// The page starts after this id (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many leases.
    pub limit: usize,
}

/// `?prefix=…&after=…&limit=…`; any other parameter is refused rather than
/// ignored, so a typo cannot silently list every lease.
#[doc(hidden)] // pub for the fuzz targets (fuzz/)
pub fn list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query.unwrap_or(""))?;
    let mut list = ListQuery { prefix: String::new(), after: None, limit: DEFAULT_LIST_LIMIT };
    for (key, value) in pairs {
        match key.as_str() {
            "prefix" => list.prefix = value,
            "after" => list.after = Some(value).filter(|a| !a.is_empty()),
            "limit" => {
                list.limit =
                    value.parse().ok().filter(|n| (1..=MAX_LIST_LIMIT).contains(n)).ok_or_else(|| {
                        ApiError::bad_request(format!("limit must be a number from 1 to {MAX_LIST_LIMIT}"))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (known: prefix, after, limit)"
                )))
            }
        }
    }
    Ok(list)
}

pub(super) async fn list_leases(State(state): State<AppState>, request: Request) -> ApiResult {
    let query = list_query(request.uri().query())?;
    let (leases, next) = state
        .broker
        .list(&query.prefix, &caller(request.extensions()), query.after.as_deref(), query.limit)
        .await?;
    Ok(Json(json!({ "leases": leases, "next": next })).into_response())
}

pub(super) async fn get_lease(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    request: Request,
) -> ApiResult {
    let id = parse_lease_id(&rest)?;
    let lease = state.broker.get(&id, &caller(request.extensions())).await?;
    Ok(Json(lease).into_response())
}

pub(super) async fn revoke_lease(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    request: Request,
) -> ApiResult {
    let id = parse_lease_id(&rest)?;
    let caller = caller(request.extensions());
    // Spawned: a caller that gives up (or a request timeout) does not cut a
    // revocation off half-way.
    let broker = state.broker.clone();
    let target = id.clone();
    let outcome = detached(async move { broker.revoke(&target, false, &caller).await }).await?;
    let mut body = revocation_json(&id, outcome);
    if !state.broker.is_revocable(id.role()) {
        body["note"] = json!(
            "this credential cannot be revoked in the backend: the lease has ended, \
             but the backend keeps honouring the credential until it expires"
        );
    }
    Ok(Json(body).into_response())
}

fn revocation_json(id: &LeaseId, outcome: Revocation) -> Value {
    let text = match outcome {
        Revocation::Revoked => "revoked",
        Revocation::AlreadyRevoked => "already_revoked",
        Revocation::Forced => "forced",
        Revocation::NotDue => "not_due",
        Revocation::Busy { .. } => "busy",
        Revocation::Released { .. } => "released",
    };
    let mut body = json!({ "lease_id": id, "outcome": text });
    if let Revocation::Released { holders } = outcome {
        // A shared lease: still held by this many others.
        body["holders"] = json!(holders);
    }
    body
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    increment: Option<String>,
}

/// `POST /v1/leases/{id}/renew`; the id may hold a raw `/`.
pub(super) async fn lease_action(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    request: Request,
) -> ApiResult {
    let Some(raw_id) = rest.strip_suffix("/renew") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint (did you mean …/renew?)",
        ));
    };
    let id = parse_lease_id(raw_id)?;
    let caller = caller(request.extensions());
    let body: RenewBody = read_json(request.into_body(), state.max_body_bytes).await?;
    let increment = parse_duration("increment", body.increment.as_deref())?;
    let broker = state.broker.clone();
    let renewed = detached(async move { broker.renew(&id, increment, &caller).await }).await?;
    let ttl_seconds = (renewed.expires_at - chrono::Utc::now()).num_seconds().max(0);
    let body = Renewed { lease: renewed, ttl_seconds };
    Ok(Json(body).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokePrefixBody {
    prefix: Option<String>,
    #[serde(default)]
    force: bool,
}

pub(super) async fn revoke_prefix(State(state): State<AppState>, request: Request) -> ApiResult {
    let caller = caller(request.extensions());
    let body: RevokePrefixBody = read_json(request.into_body(), state.max_body_bytes).await?;
    let prefix = body.prefix.filter(|p| !p.is_empty()).ok_or_else(|| {
        ApiError::bad_request("prefix is required (e.g. \"app_ro/\"); it selects the leases to revoke")
    })?;
    caller.require_admin("revoke leases by prefix").map_err(BrokerError::from)?;
    let action = audited::Irreversible::RevokePrefix { prefix: &prefix, force: body.force };
    let intent = audited::intend(&state.audit, &caller, action).await?;
    intent
        .answered(async move {
            let broker = state.broker.clone();
            let (revoked, failed) =
                detached(async move { broker.revoke_prefix(&prefix, body.force, &caller).await }).await?;
            let failed: Vec<Value> =
                failed.iter().map(|(id, e)| json!({ "lease_id": id, "error": e.to_string() })).collect();
            let status = if failed.is_empty() { StatusCode::OK } else { StatusCode::BAD_GATEWAY };
            Ok((status, Json(json!({ "revoked": revoked, "failed": failed }))).into_response())
        })
        .await
}
