//! The static-account routes: read a credential, ask for a rotation, and
//! rotate a connection's own admin credential. Permission checks are the
//! rotator's (through `policy`), as for every other caller of it; the
//! rotations are also checked here first, so that only an allowed one
//! writes its audit intent before it starts.

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{parse_duration, ApiResult};
use crate::broker::BrokerError;
use crate::http::audited::{intend, Irreversible};
use crate::http::{caller, read_json, ApiError, AppState, Path};
use crate::rotation::OperatorRequest;

/// `GET /v1/static/{name}`: the current credential and where the rotation
/// stands.
pub(super) async fn static_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let view = state.rotator.get(&name, &caller(request.extensions())).await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    reason: Option<String>,
    overlap: Option<String>,
}

/// `POST /v1/static/{name}/rotate`: an operator's rotation, now (root or
/// the daemon's user). Answers the new version, never the password.
pub(super) async fn static_rotate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let caller = caller(request.extensions());
    let body: RotateBody = read_json(request.into_body(), state.max_body_bytes).await?;
    let overlap = parse_duration("overlap", body.overlap.as_deref())?;
    caller.may_rotate(&name).map_err(BrokerError::from)?;
    let intent = intend(&state.audit, &caller, Irreversible::RotateStatic { account: &name }).await?;
    let rotated =
        state.rotator.rotate(&name, OperatorRequest { reason: body.reason, overlap }, &caller).await;
    Ok(intent.answer(rotated.map(|view| Json(view.without_secret()).into_response()).map_err(ApiError::from)))
}

/// `POST /v1/connections/{name}/rotate-root`: rotate the connection's own
/// admin password (root or the daemon's user). Answers the new version,
/// never the password: nobody can read it through the API.
pub(super) async fn rotate_root(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let caller = caller(request.extensions());
    caller.require_admin("rotate a connection's admin credential").map_err(BrokerError::from)?;
    let intent = intend(&state.audit, &caller, Irreversible::RotateRoot { connection: &name }).await?;
    let rotated = state.rotator.rotate_root(&name, &caller).await.map_err(ApiError::from);
    Ok(intent.answer(rotated.map(|root| {
        Json(json!({
            "connection": root.connection,
            "username": root.username,
            "version": root.version,
            "rotated_at": root.rotated_at,
        }))
        .into_response()
    })))
}
