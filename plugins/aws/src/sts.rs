//! STS credentials: AssumeRole, GetFederationToken and GetSessionToken.
//!
//! STS tokens cannot be revoked one by one: AWS honours them until they
//! expire. So those roles are expiry-only (the broker says so when a lease
//! is revoked), TTLs are clamped to what STS issues (at least 15 min) and
//! the real expiry goes back to the broker, which ends the lease then. The
//! operator's remedy for a leaked assumed-role token is
//! `Plugin::revoke_sessions`: a deny-all policy on the IAM role for every
//! session issued before now ([`revoke_policy`]).

use aws_sdk_sts::primitives::DateTime as AwsDateTime;
use chrono::{DateTime, Utc};
use lessor_plugin::{CreateRequest, Created, Credential, PluginError};
use secrecy::SecretString;
use serde_json::{json, Value};
use tracing::debug;

use crate::config::{AwsRole, CredentialType, STS_MIN_TTL};
use crate::connection::AwsPlugin;
use crate::error::classify;

impl AwsPlugin {
    /// AssumeRole, GetFederationToken or GetSessionToken.
    pub(crate) async fn create_sts(
        &self,
        role: &AwsRole,
        request: &CreateRequest<'_>,
    ) -> Result<Created, PluginError> {
        let ty = role.credential_type;
        let seconds = sts_duration(ty, request.expires_at, Utc::now());
        let clients = self.clients().await;
        let sts = &clients.sts;
        let what = |api: &str| format!("create {} ({api})", request.lease_id);
        let session_name = role.session_name.render(request.lease_id, request.role, request.username);
        debug!(operation = "create", connection = %self.settings.name, role = request.role, lease_id = request.lease_id, credential_type = %ty, duration_s = seconds, session_name, "requesting STS credentials");
        let credentials = match ty {
            CredentialType::AssumedRole => {
                let arn = role.role_arn.as_ref().ok_or_else(|| PluginError::Internal {
                    message: "assumed_role settings without a role_arn".into(),
                })?;
                sts.assume_role()
                    .role_arn(&arn.arn)
                    .role_session_name(&session_name)
                    .duration_seconds(seconds)
                    .set_policy(role.policy_document.clone())
                    .set_policy_arns(session_policy_arns(&role.policy_arns))
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("AssumeRole")))?
                    .credentials
            }
            CredentialType::FederationToken => {
                sts.get_federation_token()
                    .name(&session_name)
                    .duration_seconds(seconds)
                    .set_policy(role.policy_document.clone())
                    .set_policy_arns(session_policy_arns(&role.policy_arns))
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("GetFederationToken")))?
                    .credentials
            }
            CredentialType::SessionToken => {
                sts.get_session_token()
                    .duration_seconds(seconds)
                    .send()
                    .await
                    .map_err(|e| classify(&e, &what("GetSessionToken")))?
                    .credentials
            }
            CredentialType::IamUser => unreachable!("IAM users are not STS credentials"),
        };
        let credentials = credentials.ok_or_else(|| PluginError::Rejected {
            message: format!("{}: the answer holds no credentials", what(ty.as_str())),
        })?;
        let expiration = to_chrono(credentials.expiration()).ok_or_else(|| PluginError::Rejected {
            message: format!("{}: the credentials' expiration is out of range", what(ty.as_str())),
        })?;
        let access_key_id = credentials.access_key_id().to_string();
        debug!(operation = "create", connection = %self.settings.name, role = request.role, lease_id = request.lease_id, access_key_id, %expiration, "issued STS credentials");
        Ok(Created {
            plugin_data: Some(json!({ "credential_type": ty.as_str(), "access_key_id": access_key_id })),
            credential: Credential::Aws {
                access_key_id,
                secret_access_key: SecretString::from(credentials.secret_access_key()),
                session_token: Some(SecretString::from(credentials.session_token())),
                expiration: Some(expiration),
            },
            expires_at: Some(expiration),
        })
    }
}

pub(crate) fn session_policy_arns(arns: &[String]) -> Option<Vec<aws_sdk_sts::types::PolicyDescriptorType>> {
    (!arns.is_empty()).then(|| {
        arns.iter().map(|arn| aws_sdk_sts::types::PolicyDescriptorType::builder().arn(arn).build()).collect()
    })
}

/// The `DurationSeconds` to ask STS for, so the token lasts until
/// `expires_at`: whole seconds rounded up, raised to STS's 15-minute
/// minimum and capped at the type's maximum.
pub(crate) fn sts_duration(ty: CredentialType, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i32 {
    let wanted_ms = (expires_at - now).num_milliseconds().max(0) as u64;
    let wanted = wanted_ms.div_ceil(1000);
    let max = ty.max_ttl().map_or(u64::MAX, |d| d.as_secs());
    wanted.clamp(STS_MIN_TTL.as_secs(), max).min(i32::MAX as u64) as i32
}

pub(crate) fn to_chrono(at: &AwsDateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.secs(), at.subsec_nanos())
}

/// The deny-all policy for sessions issued before `cutoff` (AWS's "revoke
/// active sessions").
pub(crate) fn revoke_policy(cutoff: DateTime<Utc>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": { "DateLessThan": { "aws:TokenIssueTime": cutoff.format("%Y-%m-%dT%H:%M:%SZ").to_string() } },
        }],
    })
}
