//! The error answer every route gives, in lessor's shape; the Vault
//! routes re-shape it on the way out (`vault::shape_errors`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::audited::ErrorInfo;
use crate::broker::BrokerError;
use crate::rotation::RotationError;

/// An error answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// An error whose status comes as a number (an error type's
    /// `status_and_code`); one that is no HTTP status is `fallback`.
    pub(crate) fn coded(
        status: u16,
        fallback: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::from_u16(status).unwrap_or(fallback), code, message)
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
        Self::coded(status, StatusCode::INTERNAL_SERVER_ERROR, code, e.to_string())
    }
}

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        let (status, code) = e.status_and_code();
        Self::coded(status, StatusCode::INTERNAL_SERVER_ERROR, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        // For the audit record, which names the error without parsing the body.
        response.extensions_mut().insert(ErrorInfo { code: self.code, message: self.message });
        response
    }
}
