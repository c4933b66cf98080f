//! Every API request in the audit log before it is answered (fail closed):
//! who asked (the caller's identity and policies), what (method and route),
//! on what (the path), and how it ended (status, error code and message).
//! `health` (and Vault's `sys/health`) and `metrics` are left out: they
//! change nothing and are polled.
//!
//! When the log cannot be written the request is refused with 503
//! `audit_unavailable` and `health` says why; an issuance whose record
//! fails is revoked rather than handed out unrecorded.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::audit::{Actor, Audit, AuditError, Record};
use crate::lease::LeaseId;
use crate::policy::Caller;

/// The error an answer carries, set by [`ApiError`]'s response.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

/// The lease an issuance answer hands out.
#[derive(Debug, Clone)]
pub(crate) struct Issued(pub LeaseId);

pub(super) fn is_audited(route: Option<&str>) -> bool {
    !matches!(route, Some("/v1/health" | "/v1/metrics" | "/v1/sys/health"))
}

fn actor(caller: &Caller) -> Actor {
    let mut actor = Actor::from(caller.identity());
    let policies = caller.policy_names();
    if !policies.is_empty() {
        actor = actor.with_policy(policies.join(","));
    }
    actor
}

fn unavailable(e: &AuditError) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        e.code(),
        format!("refused because the audit log cannot be written: {e}"),
    )
    .into_response()
}

/// While the log is failing, each request first tries to record itself:
/// refused if that fails too, served (the log has recovered) if it works.
pub(super) async fn ready(
    audit: &Audit,
    audited: bool,
    caller: &Caller,
    method: &Method,
    path: &str,
) -> Result<(), Response> {
    if !audited || audit.failure().is_none() {
        return Ok(());
    }
    let probe = Record::new(format!("{method} {path}"), actor(caller))
        .target(path)
        .reason("checking the audit log recovered");
    audit.record(probe).await.map_err(|e| unavailable(&e))
}

/// Records the request and its answer; if that fails, the answer becomes a
/// 503 (and an issued credential is revoked).
pub(super) async fn record(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    route: Option<&str>,
    path: &str,
    response: Response,
) -> Response {
    let status = response.status();
    let action = format!("{method} {}", route.unwrap_or("unmatched"));
    let mut record = Record::new(action, actor(caller)).target(path).status(status.as_u16());
    let issued = response.extensions().get::<Issued>().cloned();
    if let Some(Issued(id)) = &issued {
        record = record.lease(id.as_str());
    }
    if let Some(error) = response.extensions().get::<ErrorInfo>() {
        record = match status {
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                record.denied(error.code, &error.message)
            }
            _ => record.failed(error.code, &error.message),
        };
    } else if !status.is_success() {
        record = record.failed(status.as_str(), status.canonical_reason().unwrap_or("failed"));
    }
    match state.audit.record(record).await {
        Ok(()) => response,
        Err(e) => {
            if let Some(Issued(id)) = issued {
                let broker = state.broker.clone();
                let caller = caller.clone();
                // Not handed out: nobody may hold a credential the log does not show.
                tokio::spawn(async move {
                    let _ = broker.revoke(&id, false, &caller).await;
                });
            }
            unavailable(&e)
        }
    }
}
