//! Every API request in the audit log before it is answered (fail closed):
//! who asked (the caller's identity and policies), what (method and route),
//! on what (the path), and how it ended (status, error code and message).
//! `health` (and Vault's `sys/health`) and `metrics` are left out: they
//! change nothing and are polled.
//!
//! When the log cannot be written the request is refused with 503
//! `audit_unavailable` and `health` says why; an issuance whose record
//! fails is revoked rather than handed out unrecorded.
//!
//! An irreversible admin action (revoke by prefix, force, a static or root
//! rotation, tidy, revoke-sessions) cannot be taken back once done, so a
//! record after the fact is not enough: its handler, native or Vault, calls
//! [`intend`] once the caller is known to be allowed and before it acts.
//! The intent record (`phase` `intent`) is synced first; if it cannot be
//! written the action is refused (503) with nothing done. The request's
//! own record, written after the answer as for every request, is then the
//! outcome (`phase` `outcome`, the same `intent_id`).

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

pub(crate) fn is_audited(route: Option<&str>) -> bool {
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

fn unavailable(e: &AuditError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        e.code(),
        format!("refused because the audit log cannot be written: {e}"),
    )
}

/// An irreversible admin action, as its intent record names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Irreversible<'a> {
    /// Every lease under a prefix (or, from Vault's revoke-force, one id);
    /// `force` drops those the backend refuses to revoke.
    RevokePrefix { prefix: &'a str, force: bool },
    /// A static account's rotation, asked for now.
    RotateStatic { account: &'a str },
    /// A connection's own admin credential.
    RotateRoot { connection: &'a str },
    /// Dropping backend users no lease covers (one connection, or all).
    Tidy { connection: Option<&'a str> },
    /// Denying every earlier session of a role's backend identity.
    RevokeSessions { role: &'a str },
}

impl Irreversible<'_> {
    fn record(self, actor: Actor) -> Record {
        let (action, target) = match self {
            Self::RevokePrefix { prefix, .. } => ("leases.revoke_prefix", prefix),
            Self::RotateStatic { account } => ("static.rotate_now", account),
            Self::RotateRoot { connection } => ("connection.rotate_root", connection),
            Self::Tidy { connection } => ("tidy.run", connection.unwrap_or("every connection")),
            Self::RevokeSessions { role } => ("role.revoke_sessions", role),
        };
        let record = Record::new(action, actor).target(target);
        match self {
            Self::RevokePrefix { force: true, .. } => {
                record.reason("force: leases the backend refuses to revoke are dropped all the same")
            }
            _ => record,
        }
    }
}

/// The intent of an irreversible action, written and synced: proof that
/// the action may go ahead. Its handler's answer carries it (see
/// [`answer`](Self::answer)) so the request's record is the outcome.
#[derive(Debug, Clone)]
pub(crate) struct Intent {
    id: String,
    /// Whether the answer is the action's outcome (`false` when the answer
    /// only says the action was queued: [`finished`](Self::finished) then
    /// writes the outcome).
    answered: bool,
}

/// Writes the intent record of `action` by `caller` before it is done.
/// Call it after the permission checks (a refusal needs no intent) and
/// before anything is changed; an `Err` (503 `audit_unavailable`) means
/// the action must not be done.
pub(crate) async fn intend(
    audit: &Audit,
    caller: &Caller,
    action: Irreversible<'_>,
) -> Result<Intent, ApiError> {
    let id = uuid::Uuid::new_v4().to_string();
    audit.record(action.record(actor(caller)).intent(id.clone())).await.map_err(|e| unavailable(&e))?;
    Ok(Intent { id, answered: true })
}

impl Intent {
    /// The handler's answer, whatever it is, marked as this intent's
    /// outcome for the request's record.
    pub(crate) fn answer(self, result: Result<Response, ApiError>) -> Response {
        let mut response = result.unwrap_or_else(IntoResponse::into_response);
        response.extensions_mut().insert(self);
        response
    }

    /// Runs the action and answers as [`answer`](Self::answer) does.
    pub(crate) async fn answered(
        self,
        action: impl std::future::Future<Output = Result<Response, ApiError>>,
    ) -> Result<Response, ApiError> {
        Ok(self.answer(action.await))
    }

    /// The answer to an action queued to run after it (Vault's
    /// `sync: false`): the request's record names the intent, and
    /// [`finished`](Self::finished) writes the outcome.
    pub(crate) fn queued(self, mut response: Response) -> Response {
        response.extensions_mut().insert(Intent { answered: false, ..self });
        response
    }

    /// The outcome of a queued action, written in the background (nobody
    /// waits for it; a failed write is retried with the next group).
    /// `failure` is the error it ended with, if it failed.
    pub(crate) fn finished(
        &self,
        audit: &Audit,
        caller: &Caller,
        action: Irreversible<'_>,
        failure: Option<&ApiError>,
    ) {
        let mut record = action.record(actor(caller)).outcome_of(self.id.clone());
        if let Some(error) = failure {
            record = record.failed(error.code, &error.message);
        }
        audit.record_background(record);
    }
}

/// While the log is failing, each request first tries to record itself:
/// refused if that fails too, served (the log has recovered) if it works.
pub(crate) async fn ready(
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
    audit.record(probe).await.map_err(|e| unavailable(&e).into_response())
}

/// Records the request and its answer; if that fails, the answer becomes a
/// 503 (and an issued credential is revoked).
pub(crate) async fn record(
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
    if let Some(intent) = response.extensions().get::<Intent>() {
        record = record.outcome_of(intent.id.clone());
        if !intent.answered {
            // Queued: this record says so; the outcome comes when it ends.
            record.phase = None;
        }
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
            unavailable(&e).into_response()
        }
    }
}
