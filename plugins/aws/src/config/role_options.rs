//! A role table's plugin keys as written ([`AwsRoleOptions`]), and what a
//! role issues ([`CredentialType`]): the vocabulary both kinds of role
//! settings are parsed from.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// What a role issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    /// `sts:AssumeRole` on `role_arn`: keys and a session token, 15 min to
    /// 12 h (and at most the role's own maximum session duration).
    AssumedRole,
    /// `sts:GetFederationToken` with a session policy: 15 min to 36 h.
    FederationToken,
    /// `sts:GetSessionToken` for lessor's own IAM user: 15 min to 36 h.
    SessionToken,
    /// A new IAM user with an access key, deleted when the lease ends.
    IamUser,
}

impl CredentialType {
    const ALL: [Self; 4] = [Self::AssumedRole, Self::FederationToken, Self::SessionToken, Self::IamUser];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AssumedRole => "assumed_role",
            Self::FederationToken => "federation_token",
            Self::SessionToken => "session_token",
            Self::IamUser => "iam_user",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether the credential is an STS token: expiry-only, cannot be
    /// revoked one by one nor renewed.
    pub fn is_sts(self) -> bool {
        !matches!(self, Self::IamUser)
    }

    /// The longest credential STS issues for this type.
    pub(crate) fn max_ttl(self) -> Option<Duration> {
        match self {
            Self::AssumedRole => Some(Duration::from_secs(12 * 3600)),
            Self::FederationToken | Self::SessionToken => Some(Duration::from_secs(36 * 3600)),
            Self::IamUser => None,
        }
    }

    pub(super) fn valid_list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plugin-specific keys of a `[roles.NAME]` table whose connection is
/// an AWS one, as written. [`AwsRole`](super::AwsRole) is the validated form.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsRoleOptions {
    /// What the role issues: `assumed_role`, `federation_token`,
    /// `session_token` or `iam_user`. Required.
    #[serde(default)]
    #[schemars(with = "Option<CredentialType>")]
    pub credential_type: Option<String>,
    /// (assumed_role) The IAM role to assume,
    /// `arn:aws:iam::123456789012:role/NAME`. Required for assumed_role.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// (assumed_role, federation_token) The session name (federated user
    /// name for federation_token): `{lease_id}`, `{role}` and `{username}`
    /// placeholders; characters outside `[A-Za-z0-9+=,.@_-]` become `-`;
    /// cut to its last 64 (32) characters. Default `lessor-{lease_id}`.
    #[serde(default)]
    pub session_name_template: Option<String>,
    /// A policy document (JSON). assumed_role and federation_token: the
    /// session policy, which narrows the session's permissions; iam_user:
    /// the user's inline policy.
    #[serde(default)]
    pub policy_document: Option<String>,
    /// Managed policy ARNs. assumed_role and federation_token: session
    /// policies (at most 10); iam_user: attached to the user (at most 20).
    #[serde(default)]
    pub policy_arns: Vec<String>,
    /// (iam_user) The path of the users lessor makes. Default `/lessor/`.
    #[serde(default)]
    pub user_path: Option<String>,
    /// (iam_user) Groups the user is added to.
    #[serde(default)]
    pub iam_groups: Vec<String>,
    /// (iam_user) Tags put on the user, besides lessor's own
    /// `lessor-lease-id` and `lessor-role`.
    #[serde(default)]
    pub iam_tags: BTreeMap<String, String>,
    /// (iam_user) The managed policy that bounds the user's permissions.
    #[serde(default)]
    pub permissions_boundary_arn: Option<String>,
    /// (iam_user) Before answering, probe the new key with
    /// `sts:GetCallerIdentity` (with backoff, up to 20 s) until AWS accepts
    /// it: new IAM keys take seconds to work everywhere.
    #[serde(default)]
    pub wait_until_usable: bool,
}
