//! The settings of iam_user roles: the path, groups, tags and permissions
//! boundary of the IAM users lessor makes, and the tags it keeps for itself.

use std::collections::BTreeMap;

use lessor_plugin::ConfigError;

use super::checks::{check_iam_name, check_path, check_policy_arn};
use super::role_options::AwsRoleOptions;

/// Managed policies one IAM user may have attached (AWS's hard ceiling; the
/// default quota is 10).
pub(super) const MAX_USER_POLICY_ARNS: usize = 20;
/// Tags one IAM user may carry; lessor adds two of its own.
const MAX_USER_TAGS: usize = 50;
/// The tags lessor puts on every IAM user it makes.
pub(crate) const LEASE_TAG: &str = "lessor-lease-id";
pub(crate) const ROLE_TAG: &str = "lessor-role";
/// Where lessor's IAM users live unless a role says otherwise.
const DEFAULT_USER_PATH: &str = "/lessor/";

/// The user path of a role's table, after checking its groups, tags and
/// permissions boundary; each error names its key through `key`.
pub(super) fn parse_keys(raw: &AwsRoleOptions, key: &dyn Fn(&str) -> String) -> Result<String, ConfigError> {
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
    Ok(user_path)
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
