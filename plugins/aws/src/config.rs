//! The plugin's settings: what a `[connections.NAME]` table and a
//! `[roles.NAME]` table may say, parsed into values that are already valid.
//!
//! Everything AWS would refuse at issuance time and that can be known
//! without calling it is refused here, at load, with the dotted key at
//! fault: malformed ARNs, names over IAM's limits, policy documents that
//! are not JSON, keys that make no sense for the role's credential type,
//! and TTLs outside what STS issues. The secret access key never comes from
//! these tables: the broker reads it from `password_file` / `password_env`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The shortest credential STS issues (`DurationSeconds` minimum).
pub(crate) const STS_MIN_TTL: Duration = Duration::from_secs(900);
/// IAM's limit on user, role and group names' length, and on session names.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// `GetFederationToken`'s limit on the federated user's name.
pub(crate) const MAX_FEDERATION_NAME_LEN: usize = 32;
/// Session policies (inline and managed together) and a user's inline
/// policies are limited to 2048 characters of plain text, not counting
/// whitespace.
const MAX_POLICY_CHARS: usize = 2048;
/// Managed policies one session may name (`PolicyArns`).
const MAX_SESSION_POLICY_ARNS: usize = 10;
/// Managed policies one IAM user may have attached (AWS's hard ceiling; the
/// default quota is 10).
const MAX_USER_POLICY_ARNS: usize = 20;
/// Tags one IAM user may carry; lessor adds two of its own.
const MAX_USER_TAGS: usize = 50;
/// The tags lessor puts on every IAM user it makes.
pub(crate) const LEASE_TAG: &str = "lessor-lease-id";
pub(crate) const ROLE_TAG: &str = "lessor-role";
/// The default session name: the lease id, so CloudTrail entries lead back
/// to the lease.
pub(crate) const DEFAULT_SESSION_NAME: &str = "lessor-{lease_id}";
/// Where lessor's IAM users live unless a role says otherwise.
pub(crate) const DEFAULT_USER_PATH: &str = "/lessor/";

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

    fn valid_list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plugin-specific keys of a `[connections.NAME]` table with
/// `plugin = "aws"`. The secret access key comes from the broker's
/// `password_file` / `password_env`; without `access_key_id` lessor uses
/// the standard AWS credential chain (environment, profile, web identity,
/// container or instance role).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AwsConnectionOptions {
    /// The AWS region, e.g. `eu-west-1`. Required.
    #[serde(default)]
    pub region: Option<String>,
    /// Send every STS and IAM call here instead of AWS's endpoints: an
    /// emulator (`http://127.0.0.1:5000`) or a VPC endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Overrides `endpoint_url` for STS calls only.
    #[serde(default)]
    pub sts_endpoint_url: Option<String>,
    /// Overrides `endpoint_url` for IAM calls only.
    #[serde(default)]
    pub iam_endpoint_url: Option<String>,
    /// lessor's own access key id; its secret goes in `password_file` or
    /// `password_env`. Omit both to use the standard AWS credential chain.
    #[serde(default)]
    pub access_key_id: Option<String>,
}

/// The plugin-specific keys of a `[roles.NAME]` table whose connection is
/// an AWS one, as written. [`AwsRole`] is the validated form.
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

/// A role's validated settings: what `check_role` hands the broker, and the
/// broker hands back on every call.
#[derive(Debug, Clone)]
pub struct AwsRole {
    pub(crate) credential_type: CredentialType,
    pub(crate) role_arn: Option<RoleArn>,
    pub(crate) session_name: SessionNameTemplate,
    pub(crate) policy_document: Option<String>,
    pub(crate) policy_arns: Vec<String>,
    pub(crate) user_path: String,
    pub(crate) iam_groups: Vec<String>,
    pub(crate) iam_tags: BTreeMap<String, String>,
    pub(crate) permissions_boundary_arn: Option<String>,
    pub(crate) wait_until_usable: bool,
}

impl AwsRole {
    /// Validates a role table's plugin keys; `role` names it in errors.
    pub fn parse(role: &str, options: &toml::Table) -> Result<Self, ConfigError> {
        let prefix = format!("roles.{role}");
        let key = |field: &str| format!("{prefix}.{field}");
        // The type first, alone, so that an unknown one is reported as such
        // rather than as whatever other key it makes wrong.
        let credential_type = match options.get("credential_type") {
            None => {
                return Err(ConfigError::new(
                    key("credential_type"),
                    format!("required: one of {}", CredentialType::valid_list()),
                ))
            }
            Some(toml::Value::String(text)) => CredentialType::parse(text).ok_or_else(|| {
                ConfigError::new(
                    key("credential_type"),
                    format!("unknown credential type {text:?} (valid: {})", CredentialType::valid_list()),
                )
            })?,
            Some(other) => {
                return Err(ConfigError::new(
                    key("credential_type"),
                    format!(
                        "expected a string, one of {}, found {}",
                        CredentialType::valid_list(),
                        other.type_str()
                    ),
                ))
            }
        };
        let raw: AwsRoleOptions = parse_table(options, &prefix)?;

        // Keys that mean nothing for this type are refused rather than
        // silently ignored: a `policy_arns` on a session_token role would
        // otherwise look like it narrows permissions when it does not.
        let only = |field: &str, present: bool, types: &[CredentialType]| {
            if present && !types.contains(&credential_type) {
                let list = types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" or ");
                return Err(ConfigError::new(
                    key(field),
                    format!("only used by credential_type {list}, not {credential_type}"),
                ));
            }
            Ok(())
        };
        use CredentialType::*;
        only("role_arn", raw.role_arn.is_some(), &[AssumedRole])?;
        only("session_name_template", raw.session_name_template.is_some(), &[AssumedRole, FederationToken])?;
        only("policy_document", raw.policy_document.is_some(), &[AssumedRole, FederationToken, IamUser])?;
        only("policy_arns", !raw.policy_arns.is_empty(), &[AssumedRole, FederationToken, IamUser])?;
        only("user_path", raw.user_path.is_some(), &[IamUser])?;
        only("iam_groups", !raw.iam_groups.is_empty(), &[IamUser])?;
        only("iam_tags", !raw.iam_tags.is_empty(), &[IamUser])?;
        only("permissions_boundary_arn", raw.permissions_boundary_arn.is_some(), &[IamUser])?;
        only("wait_until_usable", raw.wait_until_usable, &[IamUser])?;

        let role_arn = match (&raw.role_arn, credential_type) {
            (Some(arn), _) => Some(RoleArn::parse(arn).map_err(|e| ConfigError::new(key("role_arn"), e))?),
            (None, AssumedRole) => return Err(ConfigError::new(
                key("role_arn"),
                "required for credential_type assumed_role, e.g. \"arn:aws:iam::123456789012:role/deployer\"",
            )),
            (None, _) => None,
        };

        let name_limit =
            if credential_type == FederationToken { MAX_FEDERATION_NAME_LEN } else { MAX_NAME_LEN };
        let template = raw.session_name_template.as_deref().unwrap_or(DEFAULT_SESSION_NAME);
        let session_name = SessionNameTemplate::parse(template, name_limit)
            .map_err(|e| ConfigError::new(key("session_name_template"), format!("{template:?}: {e}")))?;

        let policy_document = match &raw.policy_document {
            Some(text) => Some(check_policy(text).map_err(|e| ConfigError::new(key("policy_document"), e))?),
            None => None,
        };
        let max_arns =
            if credential_type == IamUser { MAX_USER_POLICY_ARNS } else { MAX_SESSION_POLICY_ARNS };
        if raw.policy_arns.len() > max_arns {
            return Err(ConfigError::new(
                key("policy_arns"),
                format!("{} policies; {credential_type} allows at most {max_arns}", raw.policy_arns.len()),
            ));
        }
        for (i, arn) in raw.policy_arns.iter().enumerate() {
            check_policy_arn(arn)
                .map_err(|e| ConfigError::new(key("policy_arns"), format!("entry {}: {e}", i + 1)))?;
        }
        if credential_type == FederationToken && policy_document.is_none() && raw.policy_arns.is_empty() {
            return Err(ConfigError::new(
                key("policy_document"),
                "federation_token needs a policy_document or policy_arns: without a session policy the \
                 federated user has no permissions at all",
            ));
        }

        let user_path = raw.user_path.clone().unwrap_or_else(|| DEFAULT_USER_PATH.to_string());
        check_path(&user_path).map_err(|e| ConfigError::new(key("user_path"), e))?;
        for (i, group) in raw.iam_groups.iter().enumerate() {
            check_iam_name(group, 128)
                .map_err(|e| ConfigError::new(key("iam_groups"), format!("entry {}: {e}", i + 1)))?;
        }
        check_tags(&raw.iam_tags).map_err(|e| ConfigError::new(key("iam_tags"), e))?;
        if let Some(arn) = &raw.permissions_boundary_arn {
            check_policy_arn(arn).map_err(|e| ConfigError::new(key("permissions_boundary_arn"), e))?;
        }

        Ok(Self {
            credential_type,
            role_arn,
            session_name,
            policy_document,
            policy_arns: raw.policy_arns,
            user_path,
            iam_groups: raw.iam_groups,
            iam_tags: raw.iam_tags,
            permissions_boundary_arn: raw.permissions_boundary_arn,
            wait_until_usable: raw.wait_until_usable,
        })
    }

    pub fn credential_type(&self) -> CredentialType {
        self.credential_type
    }

    /// Checks a role's TTLs against what STS issues. A TTL under 15 min is
    /// allowed (it is raised to 15 min at issuance); a `max_ttl` under it is
    /// not, since no token could end when the lease does.
    pub(crate) fn check_ttls(
        &self,
        role: &str,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<(), ConfigError> {
        let Some(limit) = self.credential_type.max_ttl() else { return Ok(()) };
        let ty = self.credential_type;
        let key = |field: &str| format!("roles.{role}.{field}");
        if max_ttl > limit {
            return Err(ConfigError::new(
                key("max_ttl"),
                format!(
                    "{} is longer than {}, the longest {ty} credential AWS issues (max_ttl defaults to 1d: \
                     set it to {} or less)",
                    human(max_ttl),
                    human(limit),
                    human(limit)
                ),
            ));
        }
        if max_ttl < STS_MIN_TTL {
            return Err(ConfigError::new(
                key("max_ttl"),
                format!(
                    "{} is shorter than {}, the shortest {ty} credential AWS issues (shorter requests are raised to it)",
                    human(max_ttl),
                    human(STS_MIN_TTL)
                ),
            ));
        }
        // default_ttl <= max_ttl is the broker's check, reported on its own.
        let _ = default_ttl;
        Ok(())
    }
}

/// A parsed `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoleArn {
    pub(crate) arn: String,
    /// The role's name, the last path segment: what IAM's role APIs take.
    pub(crate) name: String,
}

impl RoleArn {
    pub(crate) fn parse(arn: &str) -> Result<Self, String> {
        let (account, resource) = split_iam_arn(arn)?;
        if account == "aws" || !is_account_id(account) {
            return Err(format!("{arn:?}: the account must be a 12-digit account id"));
        }
        let Some(path_and_name) = resource.strip_prefix("role/") else {
            return Err(format!("{arn:?} is not a role ARN (expected …:role/NAME)"));
        };
        let name = path_and_name.rsplit('/').next().unwrap_or_default();
        check_iam_name(name, MAX_NAME_LEN).map_err(|e| format!("{arn:?}: role name {e}"))?;
        let path = &path_and_name[..path_and_name.len() - name.len()];
        if !path.is_empty() {
            check_path(&format!("/{path}")).map_err(|e| format!("{arn:?}: role path {e}"))?;
        }
        Ok(Self { arn: arn.to_string(), name: name.to_string() })
    }
}

/// Splits `arn:PARTITION:iam::ACCOUNT:RESOURCE` into account and resource.
fn split_iam_arn(arn: &str) -> Result<(&str, &str), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [scheme, partition, service, region, account, resource] = parts[..] else {
        return Err(format!("{arn:?} is not an ARN (expected arn:aws:iam::ACCOUNT:…)"));
    };
    if scheme != "arn" {
        return Err(format!("{arn:?} is not an ARN: it must start with \"arn:\""));
    }
    if !matches!(
        partition,
        "aws" | "aws-cn" | "aws-us-gov" | "aws-iso" | "aws-iso-b" | "aws-iso-e" | "aws-iso-f" | "aws-eusc"
    ) {
        return Err(format!("{arn:?}: unknown partition {partition:?} (e.g. aws, aws-cn, aws-us-gov)"));
    }
    if service != "iam" {
        return Err(format!("{arn:?} is not an IAM ARN (service {service:?}, expected \"iam\")"));
    }
    if !region.is_empty() {
        return Err(format!("{arn:?}: IAM ARNs have no region (arn:aws:iam::ACCOUNT:…)"));
    }
    if resource.is_empty() {
        return Err(format!("{arn:?} names no resource"));
    }
    Ok((account, resource))
}

fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws:iam::aws:policy/NAME` (AWS managed) or
/// `arn:aws:iam::123456789012:policy/PATH/NAME`.
fn check_policy_arn(arn: &str) -> Result<(), String> {
    let (account, resource) = split_iam_arn(arn)?;
    if account != "aws" && !is_account_id(account) {
        return Err(format!("{arn:?}: the account must be a 12-digit account id or \"aws\""));
    }
    let Some(path_and_name) = resource.strip_prefix("policy/") else {
        return Err(format!("{arn:?} is not a managed policy ARN (expected …:policy/NAME)"));
    };
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    check_iam_name(name, 128).map_err(|e| format!("{arn:?}: policy name {e}"))
}

/// IAM names: `[A-Za-z0-9+=,.@_-]`, 1 to `max` characters.
pub(crate) fn check_iam_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > max {
        return Err(format!("{name:?} is {} characters long; IAM allows at most {max}", name.len()));
    }
    if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!("{name:?} contains {c:?}; IAM allows letters, digits and + = , . @ _ -"));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// IAM paths: `/` or `/a/b/`, printable ASCII, at most 512 characters.
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || !path.ends_with('/') {
        return Err(format!("{path:?} must start and end with '/', e.g. \"/lessor/\""));
    }
    if path.len() > 512 {
        return Err(format!("{path:?} is longer than 512 characters"));
    }
    if path.contains("//") {
        return Err(format!("{path:?} contains an empty segment"));
    }
    if let Some(c) = path.chars().find(|c| !('!'..='~').contains(c)) {
        return Err(format!("{path:?} contains {c:?}; IAM paths hold printable ASCII without spaces"));
    }
    Ok(())
}

/// Parses a policy document and returns it compacted (IAM counts
/// characters without whitespace against its limits).
fn check_policy(text: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("must be a JSON object with a \"Statement\"".into());
    };
    if !object.contains_key("Statement") {
        return Err("has no \"Statement\"".into());
    }
    let compact = serde_json::to_string(&value).expect("a JSON value serializes");
    if compact.len() > MAX_POLICY_CHARS {
        return Err(format!(
            "is {} characters long without whitespace; AWS allows at most {MAX_POLICY_CHARS}",
            compact.len()
        ));
    }
    Ok(compact)
}

fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() + 2 > MAX_USER_TAGS {
        return Err(format!(
            "{} tags; IAM allows {MAX_USER_TAGS} per user, 2 of which lessor uses",
            tags.len()
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(format!("tag key {k:?} must be 1 to 128 characters"));
        }
        if v.chars().count() > 256 {
            return Err(format!("the value of tag {k:?} is longer than 256 characters"));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!("tag key {k:?}: the aws: prefix is reserved for AWS"));
        }
        if k == LEASE_TAG || k == ROLE_TAG {
            return Err(format!("tag key {k:?} is set by lessor itself"));
        }
        let ok =
            |s: &str| s.chars().all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c));
        if !ok(k) || !ok(v) {
            return Err(format!(
                "tag {k:?}: keys and values hold letters, digits, spaces and _ . : / = + - @"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePart {
    Literal(String),
    LeaseId,
    Role,
    Username,
}

/// A session (or federated user) name template: `{lease_id}`, `{role}`,
/// `{username}` and literal characters IAM allows in names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionNameTemplate {
    parts: Vec<NamePart>,
    max_len: usize,
}

impl SessionNameTemplate {
    pub(crate) fn parse(template: &str, max_len: usize) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or("unclosed `{`")?;
                parts.push(match &after[..end] {
                    "lease_id" => NamePart::LeaseId,
                    "role" => NamePart::Role,
                    "username" => NamePart::Username,
                    other => {
                        return Err(format!(
                            "unknown placeholder `{{{other}}}` (known: {{lease_id}}, {{role}}, {{username}})"
                        ))
                    }
                });
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if let Some(c) = literal.chars().find(|&c| !is_name_char(c)) {
                    return Err(format!(
                        "character {c:?} is not allowed (use letters, digits and + = , . @ _ -)"
                    ));
                }
                parts.push(NamePart::Literal(literal.to_string()));
                rest = &rest[end..];
            }
        }
        if parts.is_empty() {
            return Err("is empty".into());
        }
        Ok(Self { parts, max_len })
    }

    /// The name for one lease: placeholders filled in, characters IAM
    /// refuses turned into `-`, cut to its last `max_len` characters (the
    /// lease id's random part comes last in the default) and at least 2.
    pub(crate) fn render(&self, lease_id: &str, role: &str, username: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                NamePart::Literal(l) => out.push_str(l),
                NamePart::LeaseId => out.push_str(lease_id),
                NamePart::Role => out.push_str(role),
                NamePart::Username => out.push_str(username),
            }
        }
        let mut name: String = out.chars().map(|c| if is_name_char(c) { c } else { '-' }).collect();
        if name.len() > self.max_len {
            name = name[name.len() - self.max_len..].to_string();
        }
        while name.len() < 2 {
            name.push('-');
        }
        name
    }
}

/// A connection's validated settings.
#[derive(Clone)]
pub(crate) struct ConnectionSettings {
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) sts_endpoint: Option<String>,
    pub(crate) iam_endpoint: Option<String>,
    /// lessor's own key; `None` means the standard AWS credential chain.
    pub(crate) static_key: Option<(String, SecretString)>,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("iam_endpoint", &self.iam_endpoint)
            .field("access_key_id", &self.static_key.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

impl ConnectionSettings {
    /// Validates a connection's settings; `name` is `[connections.NAME]`.
    pub(crate) fn parse(
        name: &str,
        url: Option<&str>,
        secret: Option<SecretString>,
        options: &toml::Table,
    ) -> Result<Self, ConfigError> {
        let prefix = format!("connections.{name}");
        let key = |field: &str| format!("{prefix}.{field}");
        let raw: AwsConnectionOptions = parse_table(options, &prefix)?;
        if url.is_some() {
            return Err(ConfigError::new(
                key("url"),
                "not used by the aws plugin: set region, and endpoint_url for an emulator or a VPC endpoint",
            ));
        }
        let region =
            raw.region.ok_or_else(|| ConfigError::new(key("region"), "required, e.g. \"eu-west-1\""))?;
        let region_ok = !region.is_empty()
            && region.len() <= 32
            && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(ConfigError::new(
                key("region"),
                format!("{region:?} is not an AWS region such as \"eu-west-1\""),
            ));
        }
        let endpoint = |field: &str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                    if url.contains('@') {
                        return Err(ConfigError::new(key(field), "must not contain credentials"));
                    }
                    Ok(Some(url.trim_end_matches('/').to_string()))
                }
                Some(url) => {
                    Err(ConfigError::new(key(field), format!("{url:?} is not an http:// or https:// URL")))
                }
                None => Ok(None),
            }
        };
        let endpoint_url = endpoint("endpoint_url", raw.endpoint_url)?;
        let sts_endpoint =
            endpoint("sts_endpoint_url", raw.sts_endpoint_url)?.or_else(|| endpoint_url.clone());
        let iam_endpoint = endpoint("iam_endpoint_url", raw.iam_endpoint_url)?.or(endpoint_url);
        let static_key = match (raw.access_key_id, secret) {
            (Some(id), Some(secret)) => {
                let id_ok = (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
                if !id_ok {
                    return Err(ConfigError::new(key("access_key_id"), "is not an AWS access key id (16 to 128 letters and digits)"));
                }
                Some((id, secret))
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    key("access_key_id"),
                    "needs its secret access key in password_file or password_env",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    key("access_key_id"),
                    "required with password_file / password_env (the secret access key); omit all three to use the standard AWS credential chain",
                ))
            }
            (None, None) => None,
        };
        Ok(Self { name: name.to_string(), region, sts_endpoint, iam_endpoint, static_key })
    }
}

/// A duration as the config writes it (`15m`, `12h`, `1d12h`).
pub(crate) fn human(d: Duration) -> String {
    let mut rest = d.as_secs();
    if rest == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

/// Deserializes a config table into `T` (all of whose fields have defaults)
/// and, on failure, finds the key at fault by trying each key alone, so the
/// error names `prefix.key` rather than the whole table.
fn parse_table<T: DeserializeOwned>(table: &toml::Table, prefix: &str) -> Result<T, ConfigError> {
    let whole = match T::deserialize(toml::Value::Table(table.clone())) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    for (key, value) in table {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(toml::Value::Table(alone)) {
            let mut message = e.message().to_string();
            if key.contains("secret") || key.contains("password") {
                message.push_str(
                    "; the secret access key belongs in password_file or password_env, never in the config",
                );
            }
            return Err(ConfigError::new(format!("{prefix}.{key}"), message));
        }
    }
    Err(ConfigError::new(prefix, whole.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn table(src: &str) -> toml::Table {
        src.parse().unwrap()
    }

    fn role(src: &str) -> Result<AwsRole, ConfigError> {
        AwsRole::parse("deploy", &table(src))
    }

    fn err(src: &str) -> ConfigError {
        role(src).unwrap_err()
    }

    const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deployer";

    #[test]
    fn assumed_role_parses() {
        let r = role(&format!(
            "credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_arns = [\"arn:aws:iam::aws:policy/ReadOnlyAccess\"]\npolicy_document = '''{{ \"Version\": \"2012-10-17\", \"Statement\": [] }}'''"
        ))
        .unwrap();
        assert_eq!(r.credential_type, CredentialType::AssumedRole);
        assert_eq!(r.role_arn.as_ref().unwrap().name, "deployer");
        assert_eq!(r.policy_document.as_deref(), Some(r#"{"Statement":[],"Version":"2012-10-17"}"#));
        let name = r.session_name.render("deploy/AbCdEfGhIjKlMnOpQrStUv", "deploy", "v_deploy_x");
        assert_eq!(name, "lessor-deploy-AbCdEfGhIjKlMnOpQrStUv");
    }

    #[test]
    fn role_arns_with_paths_and_partitions() {
        assert_eq!(RoleArn::parse("arn:aws:iam::123456789012:role/a/b/deployer").unwrap().name, "deployer");
        assert!(RoleArn::parse("arn:aws-cn:iam::123456789012:role/x").is_ok());
        for bad in [
            "deployer",
            "arn:aws:iam::12345:role/x",
            "arn:aws:iam::aws:role/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam:eu-west-1:123456789012:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/bad name",
            "arn:nope:iam::123456789012:role/x",
        ] {
            assert!(RoleArn::parse(bad).is_err(), "{bad}");
        }
        let long = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(65));
        assert!(RoleArn::parse(&long).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("");
        assert_eq!(e.key, "roles.deploy.credential_type");
        assert!(e.message.contains("assumed_role, federation_token, session_token, iam_user"), "{e}");

        let e = err("credential_type = \"assume_role\"");
        assert_eq!(e.key, "roles.deploy.credential_type");
        assert!(e.message.contains("unknown credential type \"assume_role\""), "{e}");
        assert!(e.message.contains("assumed_role, federation_token, session_token, iam_user"), "{e}");

        let e = err("credential_type = \"assumed_role\"");
        assert_eq!(e.key, "roles.deploy.role_arn");
        assert!(e.message.contains("required"), "{e}");

        let e = err("credential_type = \"assumed_role\"\nrole_arn = \"arn:aws:iam::1234:role/x\"");
        assert_eq!(e.key, "roles.deploy.role_arn");
        assert!(e.message.contains("12-digit"), "{e}");

        let e = err(&format!(
            "credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_document = \"{{nope\""
        ));
        assert_eq!(e.key, "roles.deploy.policy_document");
        assert!(e.message.contains("not valid JSON"), "{e}");

        let e = err(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\npolicy_arns = [\"arn:aws:iam::aws:policy/A\", \"ReadOnly\"]"));
        assert_eq!(e.key, "roles.deploy.policy_arns");
        assert!(e.message.starts_with("entry 2:"), "{e}");

        let e =
            err(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"\nrole_arm = \"x\""));
        assert_eq!(e.key, "roles.deploy.role_arm");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("credential_type = \"session_token\"\niam_groups = [\"g\"]");
        assert_eq!(e.key, "roles.deploy.iam_groups");
        assert!(e.message.contains("only used by credential_type iam_user"), "{e}");

        let e = err("credential_type = \"session_token\"\npolicy_document = '{\"Statement\":[]}'");
        assert_eq!(e.key, "roles.deploy.policy_document");

        let e = err("credential_type = \"federation_token\"");
        assert_eq!(e.key, "roles.deploy.policy_document");
        assert!(e.message.contains("no permissions"), "{e}");

        let e = err("credential_type = \"iam_user\"\nuser_path = \"lessor\"");
        assert_eq!(e.key, "roles.deploy.user_path");

        let e = err(&format!("credential_type = \"iam_user\"\niam_groups = [\"{}\"]", "g".repeat(129)));
        assert_eq!(e.key, "roles.deploy.iam_groups");

        let e = err("credential_type = \"iam_user\"\niam_tags = { \"lessor-lease-id\" = \"x\" }");
        assert_eq!(e.key, "roles.deploy.iam_tags");

        let e = err(
            "credential_type = \"iam_user\"\npermissions_boundary_arn = \"arn:aws:iam::123456789012:role/x\"",
        );
        assert_eq!(e.key, "roles.deploy.permissions_boundary_arn");

        let e = err("credential_type = \"federation_token\"\npolicy_arns = [\"arn:aws:iam::aws:policy/A\"]\nsession_name_template = \"x{lease}\"");
        assert_eq!(e.key, "roles.deploy.session_name_template");
        assert!(e.message.contains("unknown placeholder"), "{e}");

        let e = err("credential_type = 3");
        assert_eq!(e.key, "roles.deploy.credential_type");
    }

    #[test]
    fn iam_user_parses_with_defaults() {
        let r = role("credential_type = \"iam_user\"").unwrap();
        assert_eq!(r.user_path, "/lessor/");
        assert!(!r.wait_until_usable && r.iam_groups.is_empty());
        let r = role(
            r#"credential_type = "iam_user"
            user_path = "/lessor/batch/"
            policy_arns = ["arn:aws:iam::aws:policy/ReadOnlyAccess"]
            policy_document = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}'
            iam_groups = ["batch"]
            iam_tags = { team = "data" }
            permissions_boundary_arn = "arn:aws:iam::123456789012:policy/boundary"
            wait_until_usable = true"#,
        )
        .unwrap();
        assert_eq!(r.iam_tags["team"], "data");
        assert!(r.wait_until_usable);
    }

    #[test]
    fn ttl_limits_per_type() {
        let assumed =
            role(&format!("credential_type = \"assumed_role\"\nrole_arn = \"{ROLE_ARN}\"")).unwrap();
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert!(assumed.check_ttls("deploy", h(1), h(12)).is_ok());
        let e = assumed.check_ttls("deploy", h(1), h(13)).unwrap_err();
        assert_eq!(e.key, "roles.deploy.max_ttl");
        assert_eq!(
            e.message,
            "13h is longer than 12h, the longest assumed_role credential AWS issues (max_ttl defaults to 1d: set it to 12h or less)"
        );
        let e = assumed.check_ttls("deploy", Duration::from_secs(60), Duration::from_secs(600)).unwrap_err();
        assert!(e.message.contains("shorter than 15m"), "{e}");
        assert!(
            assumed.check_ttls("deploy", Duration::from_secs(60), h(1)).is_ok(),
            "short default is raised"
        );

        let session = role("credential_type = \"session_token\"").unwrap();
        assert!(session.check_ttls("s", h(1), h(36)).is_ok());
        assert!(session.check_ttls("s", h(1), h(37)).is_err());
        let user = role("credential_type = \"iam_user\"").unwrap();
        assert!(user.check_ttls("u", h(1), h(24 * 30)).is_ok());
    }

    #[test]
    fn session_names_are_sanitised_and_cut() {
        let t = SessionNameTemplate::parse("lessor-{lease_id}", 64).unwrap();
        let id = format!("{}/{}", "r".repeat(60), "Z".repeat(22));
        let name = t.render(&id, "r", "u");
        assert_eq!(name.len(), 64);
        assert!(name.ends_with(&format!("-{}", "Z".repeat(22))), "{name}");
        let t = SessionNameTemplate::parse("{role}", 32).unwrap();
        assert_eq!(t.render("x/y", "a", "u"), "a-");
        assert!(SessionNameTemplate::parse("a b", 64).is_err());
        assert!(SessionNameTemplate::parse("{lease_id", 64).is_err());
        assert!(SessionNameTemplate::parse("", 64).is_err());
    }

    #[test]
    fn connection_settings() {
        let parse = |url: Option<&str>, secret: Option<&str>, src: &str| {
            ConnectionSettings::parse("aws_main", url, secret.map(SecretString::from), &table(src))
        };
        let c =
            parse(None, None, "region = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000/\"").unwrap();
        assert_eq!(c.sts_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.iam_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(c.static_key.is_none());
        let c = parse(
            None,
            None,
            "region = \"eu-west-1\"\nendpoint_url = \"http://a\"\niam_endpoint_url = \"https://iam.example\"",
        )
        .unwrap();
        assert_eq!(c.iam_endpoint.as_deref(), Some("https://iam.example"));
        assert_eq!(c.sts_endpoint.as_deref(), Some("http://a"));

        assert_eq!(parse(None, None, "").unwrap_err().key, "connections.aws_main.region");
        assert_eq!(parse(None, None, "region = \"EU West\"").unwrap_err().key, "connections.aws_main.region");
        assert_eq!(
            parse(Some("http://x"), None, "region = \"eu-west-1\"").unwrap_err().key,
            "connections.aws_main.url"
        );
        let e = parse(None, None, "region = \"eu-west-1\"\nendpoint_url = \"127.0.0.1:5000\"").unwrap_err();
        assert_eq!(e.key, "connections.aws_main.endpoint_url");
        let e = parse(None, None, "region = \"eu-west-1\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"")
            .unwrap_err();
        assert_eq!(e.key, "connections.aws_main.access_key_id");
        assert!(e.message.contains("password_file"), "{e}");
        let e = parse(None, Some("s3cret-key-value"), "region = \"eu-west-1\"").unwrap_err();
        assert_eq!(e.key, "connections.aws_main.access_key_id");

        let e = parse(None, None, "region = \"eu-west-1\"\nsecret_access_key = \"s3cret-key-value\"")
            .unwrap_err();
        assert_eq!(e.key, "connections.aws_main.secret_access_key");
        assert!(e.message.contains("password_file") && !e.to_string().contains("s3cret-key-value"), "{e}");

        let c = parse(
            None,
            Some("s3cret-key-value"),
            "region = \"eu-west-1\"\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"",
        )
        .unwrap();
        assert_eq!(c.static_key.as_ref().unwrap().1.expose_secret(), "s3cret-key-value");
        let dbg = format!("{c:?} {c:#?}");
        assert!(!dbg.contains("s3cret-key-value") && dbg.contains("AKIAIOSFODNN7EXAMPLE"), "{dbg}");
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(900)), "15m");
        assert_eq!(human(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(human(Duration::from_secs(36 * 3600)), "1d12h");
        assert_eq!(human(Duration::from_secs(3661)), "1h1m1s");
    }
}
