//! The static-account routes: read a credential, ask for a rotation, and
//! rotate a connection's own admin credential. Permission checks are the
//! rotator's (through `policy`), as for every other caller of it.

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{caller, parse_duration, read_json, ApiResult, AppState, Path};
use crate::config::Strategy;
use crate::rotation::{OperatorRequest, StaticView};

/// A static account as the API shows it; the password only when asked for.
pub(crate) fn static_json(view: &StaticView, with_secret: bool) -> Value {
    let mut body = json!({
        "name": view.name,
        "strategy": view.strategy.as_str(),
        "credential": { "username": view.username },
        "version": view.version,
        "rotated_at": view.rotated_at,
        "next_rotation_at": view.next_rotation_at,
        "previous_username": view.previous_username,
        "previous_valid_until": view.previous_valid_until,
        "schedule": view.schedule,
        "rotation": {
            "in_progress": view.rotating,
            "failures": view.failures,
            "last_error": view.last_error,
        },
    });
    if view.strategy == Strategy::AccessKey {
        body["credential"] = json!({ "access_key_id": view.username });
        if with_secret {
            body["credential"]["secret_access_key"] = json!(view.password.expose_secret());
        }
    } else if with_secret {
        body["credential"]["password"] = json!(view.password.expose_secret());
    }
    body
}

/// `GET /v1/static/{name}`: the current credential and where the rotation
/// stands.
pub(super) async fn static_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let view = state.rotator.get(&name, &caller(request.extensions())).await?;
    Ok(Json(static_json(&view, true)).into_response())
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
    let view = state.rotator.rotate(&name, OperatorRequest { reason: body.reason, overlap }, &caller).await?;
    Ok(Json(static_json(&view, false)).into_response())
}

/// `POST /v1/connections/{name}/rotate-root`: rotate the connection's own
/// admin password (root or the daemon's user). Answers the new version,
/// never the password: nobody can read it through the API.
pub(super) async fn rotate_root(
    State(state): State<AppState>,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult {
    let root = state.rotator.rotate_root(&name, &caller(request.extensions())).await?;
    Ok(Json(json!({
        "connection": root.connection,
        "username": root.username,
        "version": root.version,
        "rotated_at": root.rotated_at,
    }))
    .into_response())
}
