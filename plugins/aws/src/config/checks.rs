//! What the connection and both kinds of role share: a table read into
//! its struct with the key at fault named, and IAM's syntax (names, paths,
//! ARNs, policy documents) checked before AWS sees it.

/// IAM's limit on user, role and group names' length, and on session names.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// Session policies (inline and managed together) and a user's inline
/// policies are limited to 2048 characters of plain text, not counting
/// whitespace.
const MAX_POLICY_CHARS: usize = 2048;

/// Splits `arn:PARTITION:iam::ACCOUNT:RESOURCE` into account and resource.
pub(super) fn split_iam_arn(arn: &str) -> Result<(&str, &str), String> {
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

pub(super) fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws:iam::aws:policy/NAME` (AWS managed) or
/// `arn:aws:iam::123456789012:policy/PATH/NAME`.
pub(super) fn check_policy_arn(arn: &str) -> Result<(), String> {
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

pub(super) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// IAM paths: `/` or `/a/b/`, printable ASCII, at most 512 characters.
pub(super) fn check_path(path: &str) -> Result<(), String> {
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
pub(super) fn check_policy(text: &str) -> Result<String, String> {
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
