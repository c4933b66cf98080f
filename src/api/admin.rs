//! Operator routes that act across many leases or users: `POST /v1/tidy`
//! and `POST /v1/roles/{role}/revoke-sessions` (admin callers only).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::ApiResult;
use crate::broker::BrokerError;
use crate::http::{audited, caller, read_json, ApiError, AppState, Path};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TidyBody {
    connection: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/tidy`: sweep users no lease covers, now (admin callers only).
pub(super) async fn tidy(State(state): State<AppState>, request: Request) -> ApiResult {
    let caller = caller(request.extensions());
    caller.require_admin("run tidy").map_err(BrokerError::from)?;
    let body: TidyBody = read_json(request.into_body(), state.max_body_bytes).await?;
    // A dry run changes nothing: no intent to announce.
    let action = audited::Irreversible::Tidy { connection: body.connection.as_deref() };
    let intent =
        if body.dry_run { None } else { Some(audited::intend(&state.audit, &caller, action).await?) };
    // Spawned: a caller that goes away does not cut a sweep off half-way.
    let tidy = state.tidy.clone();
    let sweep = async move {
        let reports = tokio::spawn(async move { tidy.run(body.connection.as_deref(), body.dry_run).await })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| {
                let (status, code) = e.status_and_code();
                ApiError::coded(status, StatusCode::BAD_REQUEST, code, e.to_string())
            })?;
        Ok(Json(json!({ "connections": reports })).into_response())
    };
    match intent {
        Some(intent) => intent.answered(sweep).await,
        None => sweep.await,
    }
}

/// `POST /v1/roles/{role}/revoke-sessions`: deny every session of the
/// role's backend identity issued before now (AWS assumed_role: a deny-all
/// policy on the IAM role). Admin callers only.
pub(super) async fn revoke_sessions(
    State(state): State<AppState>,
    Path(role): Path<String>,
    request: Request,
) -> ApiResult {
    let caller = caller(request.extensions());
    caller.require_admin("revoke the sessions of a role").map_err(BrokerError::from)?;
    let action = audited::Irreversible::RevokeSessions { role: &role };
    let intent = audited::intend(&state.audit, &caller, action).await?;
    // Spawned: a caller that goes away does not cut the action off.
    let broker = state.broker.clone();
    intent
        .answered(async move {
            let done = tokio::spawn(async move { broker.revoke_sessions(&role, &caller).await })
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
            Ok(Json(done).into_response())
        })
        .await
}
