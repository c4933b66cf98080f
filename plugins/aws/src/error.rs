//! From the AWS SDK's failures to the broker's [`PluginError`] classes.
//!
//! The broker decides between "retry later", "tell the caller" and "page
//! someone" from the class alone. The SDK already retries throttling and
//! 5xx answers (standard retry mode) before an error reaches us, so what
//! arrives as throttling is reported `Unavailable` for the broker's own,
//! slower backoff rather than retried again at once. Messages hold the
//! operation, the user or role, the AWS API, and AWS's error code and
//! message: never a request or response body, so never a key.

use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use lessor_plugin::PluginError;

/// Error codes after which trying again later can succeed.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ServiceFailure",
    "InternalFailure",
    "InternalError",
    "ConcurrentModification",
    "RequestTimeout",
    "RequestTimeoutException",
    "IDPCommunicationError",
];

/// Error codes that mean the role's settings do not fit what AWS accepts
/// (a policy it refuses, a TTL above the IAM role's maximum session
/// duration): the role is at fault, not the backend.
const ROLE_CODES: &[&str] = &[
    "MalformedPolicyDocument",
    "PackedPolicyTooLarge",
    "ValidationError",
    "InvalidInput",
    "InvalidParameterValue",
    "InvalidParameterCombination",
];

/// Whether an IAM answer says the entity does not exist.
pub(crate) fn is_no_such_entity<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.code() == Some("NoSuchEntity")
}

/// Whether an IAM answer says the user still has something attached that
/// blocks its deletion.
pub(crate) fn is_delete_conflict<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.code() == Some("DeleteConflict")
}

/// `Ok(None)` when IAM says the entity does not exist, the classified error
/// for any other failure.
pub(crate) fn gone_ok<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
    what: &str,
) -> Result<Option<T>, PluginError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_no_such_entity(&e) => Ok(None),
        Err(e) => Err(classify(&e, what)),
    }
}

/// Classifies a failed SDK call; `what` says what was being done, e.g.
/// `create v_batch_x (CreateUser)`.
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>, what: &str) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ConstructionFailure(_) => {
            PluginError::Internal { message: format!("{what}: {}", DisplayErrorContext(err)) }
        }
        SdkError::TimeoutError(_) => PluginError::Unavailable { message: format!("{what}: timed out") },
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            PluginError::Unavailable { message: format!("{what}: {}", DisplayErrorContext(err)) }
        }
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            classify_service(err.code(), err.message(), status, what)
        }
        _ => PluginError::Unavailable { message: format!("{what}: {}", DisplayErrorContext(err)) },
    }
}

/// The classification table, apart from the SDK's types so it can be
/// unit-tested without a server.
pub(crate) fn classify_service(
    code: Option<&str>,
    message: Option<&str>,
    status: u16,
    what: &str,
) -> PluginError {
    let text = match (code, message) {
        (Some(code), Some(message)) => format!("{what}: {code}: {message} (HTTP {status})"),
        (Some(code), None) => format!("{what}: {code} (HTTP {status})"),
        // Some emulators answer in a layout the SDK cannot read.
        (None, _) => format!("{what}: HTTP {status} without a readable AWS error"),
    };
    match code {
        Some(code) if RETRYABLE_CODES.contains(&code) => PluginError::Unavailable { message: text },
        Some(code) if ROLE_CODES.contains(&code) => PluginError::InvalidRole { message: text },
        None if status >= 500 || status == 429 => PluginError::Unavailable { message: text },
        _ if status >= 500 => PluginError::Unavailable { message: text },
        _ => PluginError::Rejected { message: text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin::Fault;

    #[test]
    fn classification_table() {
        let c =
            |code: Option<&str>, status| classify_service(code, Some("m"), status, "create u (CreateUser)");
        assert!(matches!(c(Some("Throttling"), 400), PluginError::Unavailable { .. }));
        assert!(matches!(c(Some("ServiceFailure"), 500), PluginError::Unavailable { .. }));
        assert!(matches!(c(Some("ConcurrentModification"), 409), PluginError::Unavailable { .. }));
        assert!(matches!(c(None, 503), PluginError::Unavailable { .. }));
        assert!(matches!(c(Some("Unknown"), 502), PluginError::Unavailable { .. }));
        for code in ["MalformedPolicyDocument", "ValidationError", "PackedPolicyTooLarge"] {
            let e = c(Some(code), 400);
            assert!(matches!(e, PluginError::InvalidRole { .. }), "{code}");
            assert_eq!(e.fault(), Fault::Caller);
        }
        for code in
            ["AccessDenied", "InvalidClientTokenId", "EntityAlreadyExists", "LimitExceeded", "NoSuchEntity"]
        {
            let e = c(Some(code), 403);
            assert!(matches!(e, PluginError::Rejected { .. }), "{code}");
            assert!(!e.is_retryable());
        }
        assert!(matches!(c(None, 403), PluginError::Rejected { .. }));
    }

    #[test]
    fn messages_name_the_step_and_code() {
        let e = classify_service(Some("AccessDenied"), Some("not allowed"), 403, "create v_x (CreateUser)");
        assert_eq!(
            e.to_string(),
            "backend refused: create v_x (CreateUser): AccessDenied: not allowed (HTTP 403)"
        );
        let e = classify_service(None, None, 403, "verify (GetCallerIdentity)");
        assert!(e.to_string().contains("HTTP 403 without a readable AWS error"), "{e}");
    }
}
