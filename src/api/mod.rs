//! The socket API: HTTP/1.1 + JSON over a Unix socket (DESIGN §5).
//!
//! Handlers are thin: they parse, call the [`Broker`] and shape the answer.
//! What every request needs (the caller's identity from `SO_PEERCRED`, a
//! timeout, a body limit, a log line with uid and pid) lives in layers
//! around them. Bodies are read and parsed here rather than by axum's
//! extractors so that every rejection, including an oversized body, is a
//! JSON error in the documented shape.

mod admin;
pub(crate) mod audited;
mod leases;
pub mod listen;
mod peer;
mod statics;
mod status;
mod watch;

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use lessor_plugin::Credential;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::audit::Audit;
use crate::broker::{Broker, BrokerError, Caller};
use crate::config::{Duration, ValidatedConfig};
use crate::events::Events;
use crate::lease::{Lease, LeaseId};
use crate::policy::Policies;
use crate::rotation::{RotationError, Rotator};
use crate::store::LeaseStore;
use crate::tidy::Tidy;
use tokio_util::sync::CancellationToken;

use admin::{revoke_sessions, tidy};
use leases::{get_lease, lease_action, list_leases, revoke_lease, revoke_prefix};
pub use leases::{list_query, serde_urlencoded_pairs, ListQuery, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
pub use peer::PeerInfo;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub tidy: Arc<Tidy>,
    pub rotator: Arc<Rotator>,
    pub events: Events,
    /// Ends the streams of `GET /v1/watch` when the daemon stops.
    pub shutdown: CancellationToken,
    pub max_body_bytes: usize,
    pub request_timeout: StdDuration,
    /// Who may do what.
    pub policies: Policies,
    /// Where every request is recorded before it is answered.
    pub audit: Audit,
    /// What `GET /v1/metrics` renders; `None` answers an empty text.
    pub metrics: Option<crate::metrics::Exporter>,
    /// Whether the Vault-compatible routes are served (`server.vault_api`).
    pub vault_api: bool,
    /// Open `GET /v1/watch` streams per uid.
    pub watchers: Arc<watch::Watchers>,
}

impl AppState {
    /// Builds the broker, tidy and rotator for `config` over `store`. None
    /// of their background work runs until the caller starts it.
    pub fn new(config: &ValidatedConfig, store: Arc<dyn LeaseStore>, shutdown: CancellationToken) -> Self {
        Self::with_audit(config, store, shutdown, Audit::disabled())
    }

    /// [`new`](Self::new), recording requests and background actions in `audit`.
    pub fn with_audit(
        config: &ValidatedConfig,
        store: Arc<dyn LeaseStore>,
        shutdown: CancellationToken,
        audit: Audit,
    ) -> Self {
        let events = Events::default();
        let broker = Broker::new(config, store.clone(), shutdown.clone(), events.clone(), audit.clone());
        let rotator = Rotator::new(
            config,
            store.clone(),
            shutdown.clone(),
            broker.tasks().clone(),
            events.clone(),
            audit.clone(),
        );
        Self {
            tidy: Tidy::new(config, store, &rotator),
            broker,
            rotator,
            events,
            shutdown,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout.as_std(),
            policies: config.policies.clone(),
            audit,
            metrics: None,
            vault_api: config.server.vault_api,
            watchers: watch::Watchers::new(config.server.max_watches_per_uid),
        }
    }
}

/// An error answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// The same error answered with another status (the Vault API's codes).
    pub(crate) fn with_status(self, status: StatusCode) -> Self {
        Self { status, ..self }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let (status, code) = e.status_and_code();
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            e.to_string(),
        )
    }
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        let (status, code) = e.status_and_code();
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        // For the audit record, which names the error without parsing the body.
        response.extensions_mut().insert(audited::ErrorInfo { code: self.code, message: self.message });
        response
    }
}

type ApiResult = Result<Response, ApiError>;

/// Builds the router with its layers.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/v1/health", get(status::health))
        .route("/v1/metrics", get(status::metrics))
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
        elsewhere = who.confined.as_deref().unwrap_or("-"),
        not_admin = caller.not_admin_because().unwrap_or("-"),
        identity_changed = changed.as_deref().unwrap_or("-"),
        policies = caller.policy_names().join(","),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Runs a broker operation in a task of its own, so a caller that goes
/// away (or a request timeout) does not cut it off half-way.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::spawn(work).await.map_err(|e| BrokerError::Internal { message: e.to_string() })?
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_bytes(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("cannot read request body: {e}"))),
    }
}

/// Reads a JSON body of at most `limit` bytes; an empty body is `T::default()`.
async fn read_json<T: DeserializeOwned + Default>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = read_bytes(body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

/// axum's `Path`, but its rejection (a segment that is not UTF-8 once
/// percent-decoded, e.g. `/v1/creds/%FF`) is a JSON error like every other
/// answer instead of axum's plain-text one.
pub(crate) struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let status = rejection.status();
                let code = if status.is_client_error() { "bad_request" } else { "internal" };
                Err(ApiError::new(status, code, rejection.body_text()))
            }
        }
    }
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

pub(crate) fn caller(request_parts: &axum::http::Extensions) -> Caller {
    request_parts.get::<Caller>().expect("guard layer sets the caller").clone()
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
    let lease = &issued.lease;
    let body = lessor_client::Issued {
        lease_id: lease.id.to_string(),
        role: lease.role.clone(),
        plugin: issued.plugin.to_string(),
        ttl_seconds: (lease.expires_at - lease.issued_at).num_seconds(),
        expires_at: lease.expires_at,
        renewable: lease.renewable,
        credential: api_credential(&issued.credential)?,
    };
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(audited::Issued(lease.id.clone()));
    Ok(response)
}

/// A plugin's credential as the API hands it out.
fn api_credential(credential: &Credential) -> Result<lessor_client::Credential, ApiError> {
    Ok(match credential {
        Credential::Database { username, password } => {
            lessor_client::Credential::Database { username: username.clone(), password: password.clone() }
        }
        Credential::Aws { access_key_id, secret_access_key, session_token, expiration } => {
            lessor_client::Credential::Aws {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expiration: *expiration,
            }
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the plugin made a credential of a kind the API cannot show",
            ))
        }
    })
}

pub(crate) fn lease_info(lease: &Lease) -> lessor_client::LeaseInfo {
    lessor_client::LeaseInfo {
        lease_id: lease.id.to_string(),
        role: lease.role.clone(),
        connection: lease.connection.clone(),
        username: lease.username.clone(),
        state: lease.state.as_str().to_string(),
        issued_at: lease.issued_at,
        expires_at: lease.expires_at,
        max_expires_at: lease.max_expires_at,
        renewable: lease.renewable,
        attempts: lease.attempts,
        last_error: lease.last_error.clone(),
        owner: lease.owner.clone(),
        revoked_at: lease.revoked_at,
        ttl_seconds: None,
    }
}
