//! The plugin's settings: what a `[connections.NAME]` table and a
//! `[roles.NAME]` table may say, parsed into values that are already valid.
//!
//! Everything AWS would refuse at issuance time and that can be known
//! without calling it is refused here, at load, with the dotted key at
//! fault: malformed ARNs, names over IAM's limits, policy documents that
//! are not JSON, keys that make no sense for the role's credential type,
//! and TTLs outside what STS issues. The secret access key never comes from
//! these tables: the broker reads it from `password_file` / `password_env`.
//!
//! - `role_options`: the role keys as written and the credential types;
//! - `sts`: the STS roles' settings: the role ARN, the session name
//!   template, and the TTL limits of each STS call;
//! - `iam_user`: the IAM users' path, groups, tags and boundary;
//! - `connection`: the connection's region, endpoints and own key;
//! - `checks`: what they share: IAM's names, paths, ARNs and policy
//!   documents, and reading a table with the key at fault named.
//!
//! [`AwsRole`] here puts a role together: which keys each credential type
//! takes, then each half's keys, then the policies both halves use.

mod checks;
mod connection;
mod iam_user;
mod role_options;
mod sts;

use std::collections::BTreeMap;
use std::time::Duration;

use lessor_plugin::ConfigError;

pub(crate) use checks::{check_iam_name, MAX_NAME_LEN};
use checks::{check_policy, check_policy_arn};
pub use connection::AwsConnectionOptions;
pub(crate) use connection::ConnectionSettings;
pub(crate) use iam_user::{LEASE_TAG, ROLE_TAG};
use lessor_plugin::options::parse_table;
pub use role_options::{AwsRoleOptions, CredentialType};
pub(crate) use sts::STS_MIN_TTL;
use sts::{RoleArn, SessionNameTemplate};

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

        let (role_arn, session_name) = sts::parse_keys(&raw, credential_type, &key)?;

        let policy_document = match &raw.policy_document {
            Some(text) => Some(check_policy(text).map_err(|e| ConfigError::new(key("policy_document"), e))?),
            None => None,
        };
        let max_arns = if credential_type == IamUser {
            iam_user::MAX_USER_POLICY_ARNS
        } else {
            sts::MAX_SESSION_POLICY_ARNS
        };
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

        let user_path = iam_user::parse_keys(&raw, &key)?;

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

    /// Checks a role's TTLs against what STS issues (see
    /// [`sts::check_ttls`]).
    pub(crate) fn check_ttls(
        &self,
        role: &str,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<(), ConfigError> {
        sts::check_ttls(self.credential_type, role, default_ttl, max_ttl)
    }
}

#[cfg(test)]
mod tests;
