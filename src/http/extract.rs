//! Reading a request: its caller, its path segments, its query and its
//! body. Bodies are read and parsed here rather than by axum's extractors
//! so that every rejection, an oversized body included, is an
//! [`ApiError`] in the documented shape.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::broker::Caller;

/// The caller the guard layer identified (`SO_PEERCRED` and the policies
/// it matches).
pub(crate) fn caller(request_parts: &axum::http::Extensions) -> Caller {
    request_parts.get::<Caller>().expect("guard layer sets the caller").clone()
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
pub(crate) async fn read_json<T: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
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

/// A query string's pairs, percent-decoded (`+` is a space).
#[doc(hidden)] // pub for the fuzz targets (fuzz/)
pub fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |t: &str| {
                percent_encoding::percent_decode_str(&t.replace('+', " "))
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| ApiError::bad_request("query string is not valid UTF-8"))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}
