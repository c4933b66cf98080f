//! The Vault-compatible routes: a thin translation onto the broker, so the
//! `bao`/`vault` CLI, hvac and OpenBao Agent work against lessor unchanged.
//!
//! Every handler parses Vault's request, calls the same [`Broker`] or
//! [`Rotator`] function as the native route (so the same permission checks,
//! quotas, audit records and metrics apply) and shapes Vault's answer: the
//! envelope of `sdk/logical/translate_response.go` and errors as
//! `{"errors":[…]}`. Tokens are not a thing here: `X-Vault-Token` is
//! accepted and ignored, the caller is the socket peer as everywhere else.
//!
//! - [`ids`]: Vault's lease ids (`database/creds/app_ro/<id>`) and lessor's;
//! - [`secrets`]: `database/…` and `aws/…`: issue, static credentials,
//!   rotations;
//! - [`leases`]: `sys/leases/…`: renew, lookup, list, revoke;
//! - [`sys`]: `sys/health`, `auth/token/lookup-self` and the KV preflight.
//!
//! [`Broker`]: crate::broker::Broker
//! [`Rotator`]: crate::rotation::Rotator

pub mod ids;
mod leases;
mod secrets;
mod sys;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, on, MethodFilter};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::broker::BrokerError;
use crate::config::Duration;
use crate::http::audited::ErrorInfo;
use crate::http::{read_bytes, serde_urlencoded_pairs, ApiError, AppState};
use crate::rotation::RotationError;

pub use ids::Mount;

/// The first path segments (after `/v1/`) of the Vault API lessor serves.
const VAULT_ROOTS: &[&str] = &["database", "aws", "ldap", "sys", "auth"];

/// The Vault routes, which the socket API's router (`api::router`)
/// merges with its own.
pub fn routes() -> Router<AppState> {
    let update = MethodFilter::PUT.or(MethodFilter::POST);
    Router::new()
        .route("/v1/database/creds/{role}", get(secrets::database_creds))
        .route("/v1/database/static-creds/{name}", get(secrets::static_creds))
        .route("/v1/database/rotate-role/{name}", on(update, secrets::rotate_role))
        .route("/v1/database/rotate-root/{connection}", on(update, secrets::rotate_root))
        .route("/v1/aws/creds/{role}", on(update.or(MethodFilter::GET), secrets::aws_creds))
        .route("/v1/aws/sts/{role}", on(update.or(MethodFilter::GET), secrets::aws_sts))
        .route("/v1/aws/static-creds/{name}", get(secrets::static_creds))
        .route("/v1/ldap/creds/{role}", get(secrets::ldap_creds))
        .route("/v1/ldap/static-cred/{name}", get(secrets::static_creds))
        .route("/v1/ldap/rotate-role/{name}", on(update, secrets::rotate_role))
        .route("/v1/sys/leases/renew", on(update, leases::renew))
        .route("/v1/sys/leases/renew/{*lease_id}", on(update, leases::renew))
        .route("/v1/sys/leases/lookup", on(update, leases::lookup).get(leases::list))
        .route("/v1/sys/leases/lookup/", any(leases::list))
        .route("/v1/sys/leases/lookup/{*prefix}", any(leases::list))
        .route("/v1/sys/leases/revoke", on(update, leases::revoke))
        .route("/v1/sys/leases/revoke/{*lease_id}", on(update, leases::revoke))
        .route("/v1/sys/leases/revoke-prefix/{*prefix}", on(update, leases::revoke_prefix))
        .route("/v1/sys/leases/revoke-force/{*prefix}", on(update, leases::revoke_force))
        .route("/v1/auth/token/lookup-self", get(sys::lookup_self))
        .route("/v1/sys/health", get(sys::health))
        .route("/v1/sys/internal/ui/mounts/{*path}", get(sys::no_mount_info))
}

/// Whether `path` is one of the Vault API's (and so answers errors in
/// Vault's shape).
pub fn is_vault_path(path: &str) -> bool {
    path.strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|root| VAULT_ROOTS.contains(&root))
}

/// Whether a request comes from a Vault client: `bao`, `vault` and Agent
/// send `X-Vault-Request`, and most clients a token. Their requests for
/// paths lessor does not serve (`secret/…`, `transit/…`) are answered in
/// Vault's shape too, so the client shows the message.
fn from_vault_client(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key("x-vault-request") || headers.contains_key("x-vault-token")
}

/// A layer around the whole API: on Vault's paths (or any path a Vault
/// client asks for), every answer is marked `Cache-Control: no-store`, and
/// an error answer in lessor's shape
/// (`{"error":{code,message}}`, from a handler or from the layers that
/// identify, time and audit requests) is re-shaped into Vault's
/// (`{"errors":[…]}`), which is what `bao` and hvac parse.
pub async fn shape_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let vault = is_vault_path(&path) || from_vault_client(request.headers());
    let mut response = next.run(request).await;
    if !vault {
        return response;
    }
    // As Vault's: nothing on the way may keep a copy of a credential.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let Some(error) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    let status = response.status();
    let errors = match (status, error.code) {
        // Vault's word for every refusal, then lessor's, which names the
        // permission that is missing.
        (StatusCode::FORBIDDEN, _) => vec!["permission denied".to_string(), error.message.clone()],
        (StatusCode::NOT_FOUND, "not_found") => vec![format!(
            "no handler for route {:?}: lessor serves database/, aws/, sys/leases/, sys/health and \
             auth/token/lookup-self; KV, transit, PKI, tokens and wrapping are not supported",
            path.trim_start_matches("/v1/")
        )],
        (StatusCode::METHOD_NOT_ALLOWED, _) => vec!["unsupported operation".to_string()],
        _ => vec![error.message.clone()],
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&json!({ "errors": errors })).expect("JSON of strings");
    Response::from_parts(parts, Body::from(body))
}

/// Vault's answer envelope (`logical.HTTPResponse`), in Vault's key order.
/// No `Debug`: its data holds plaintext credentials.
#[derive(Default)]
pub(crate) struct Envelope {
    pub lease_id: String,
    pub renewable: bool,
    pub lease_duration: i64,
    pub data: Option<Value>,
    pub warnings: Vec<String>,
}

impl IntoResponse for Envelope {
    fn into_response(self) -> Response {
        let warnings = if self.warnings.is_empty() { Value::Null } else { json!(self.warnings) };
        let body = json!({
            "request_id": request_id(),
            "lease_id": self.lease_id,
            "renewable": self.renewable,
            "lease_duration": self.lease_duration,
            "data": self.data,
            "wrap_info": null,
            "warnings": warnings,
            "auth": null,
        });
        Json(body).into_response()
    }
}

/// A random id in the form of a UUID (version 4), as Vault's `request_id`.
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// 204, Vault's answer to a write with nothing to say.
fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A Vault request body: JSON object, or empty, or a literal `null`.
/// Fields Vault does not know are ignored, as Vault does.
async fn read_body(state: &AppState, body: Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_bytes(body, state.max_body_bytes).await?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?.trim();
    if text.is_empty() || text == "null" {
        return Ok(Map::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("failed to parse JSON input: {e}"))),
    }
}

/// The query string's pairs and the body's fields together, as Vault's
/// framework reads parameters (the body wins).
fn params(query: Option<&str>, mut body: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    for (key, value) in serde_urlencoded_pairs(query.unwrap_or(""))? {
        body.entry(key).or_insert(Value::String(value));
    }
    Ok(body)
}

/// A string field; `null` is absent.
fn string_field(params: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!("{key}: expected a string, got {other}"))),
    }
}

/// A boolean field (`true`, or the strings Go's `strconv.ParseBool` takes).
fn bool_field(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
            _ => Err(ApiError::bad_request(format!("{key}: {s:?} is not a boolean"))),
        },
        Some(other) => Err(ApiError::bad_request(format!("{key}: expected a boolean, got {other}"))),
    }
}

/// A duration field as Vault takes it: whole seconds as a number or a
/// string of digits, or a duration string (`30m`, `1h30m`). `0` and
/// `null` are absent (the role's default).
fn duration_field(params: &Map<String, Value>, key: &str) -> Result<Option<Duration>, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("{key}: {why}"));
    let secs = match params.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| bad(format!("{n} is not a whole number of seconds")))?
        }
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| bad(format!("{s:?} is too large")))?
        }
        Some(Value::String(s)) => {
            let d: Duration = s.parse().map_err(|e| bad(format!("{e}")))?;
            return Ok(Some(d).filter(|d| !d.as_std().is_zero()));
        }
        Some(other) => return Err(bad(format!("expected seconds or a duration, got {other}"))),
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// A broker error with the status Vault gives it: an unknown role or lease
/// is Vault's 400 (`logical.ErrorResponse`), not lessor's 404.
fn broker_error(e: BrokerError) -> ApiError {
    match &e {
        BrokerError::UnknownRole { role } => ApiError::bad_request(format!("unknown role: {role}")),
        BrokerError::UnknownLease { .. } => ApiError::bad_request("invalid lease"),
        _ => ApiError::from(e),
    }
}

/// A rotation error with the status Vault gives it: an unknown account or
/// connection is a 400.
fn rotation_error(e: RotationError) -> ApiError {
    let unknown = matches!(e, RotationError::UnknownAccount { .. } | RotationError::UnknownConnection { .. });
    let error = ApiError::from(e);
    if unknown {
        error.with_status(StatusCode::BAD_REQUEST)
    } else {
        error
    }
}

/// Seconds from now until `at`, to the nearest (a lease renewed by 30m
/// a few milliseconds ago has 1800 s left, as Vault says), never negative.
fn seconds_until(at: chrono::DateTime<chrono::Utc>) -> i64 {
    ((at - chrono::Utc::now()).num_milliseconds() + 500).div_euclid(1000).max(0)
}

/// A time as Vault writes it: RFC 3339 in UTC with nanoseconds.
fn vault_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_vault_reads_them() {
        let map = |v: Value| json!({ "d": v }).as_object().unwrap().clone();
        let secs = |v: Value| duration_field(&map(v), "d").unwrap().map(Duration::as_secs);
        assert_eq!(secs(json!(1800)), Some(1800));
        assert_eq!(secs(json!("1800")), Some(1800));
        assert_eq!(secs(json!("30m")), Some(1800));
        assert_eq!(secs(json!("1h30m")), Some(5400));
        assert_eq!(secs(json!(0)), None);
        assert_eq!(secs(json!("0")), None);
        assert_eq!(secs(json!("")), None);
        assert_eq!(secs(Value::Null), None);
        for bad in [json!(-1), json!(1.5), json!("1x"), json!(true)] {
            let e = duration_field(&map(bad.clone()), "d").unwrap_err();
            assert!(format!("{e:?}").contains("d:"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn only_vault_roots_are_vault_paths() {
        assert!(is_vault_path("/v1/database/creds/x"));
        assert!(is_vault_path("/v1/sys/leases/renew"));
        assert!(is_vault_path("/v1/auth/token/lookup-self"));
        assert!(!is_vault_path("/v1/creds/x"));
        assert!(!is_vault_path("/v1/leases/x/y"));
        assert!(!is_vault_path("/v1/secret/data/x"));
        assert!(!is_vault_path("/v1/"));
        assert!(!is_vault_path("/database/creds/x"));
    }
}
