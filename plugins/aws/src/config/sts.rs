//! The STS roles' settings (assumed_role, federation_token,
//! session_token): the role to assume, the session name template, and the
//! TTL limits of each STS call.

use std::time::Duration;

use lessor_plugin::ConfigError;

use super::checks::{check_iam_name, check_path, is_account_id, is_name_char, split_iam_arn, MAX_NAME_LEN};
use super::role_options::{AwsRoleOptions, CredentialType};

/// The shortest credential STS issues (`DurationSeconds` minimum).
pub(crate) const STS_MIN_TTL: Duration = Duration::from_secs(900);
/// `GetFederationToken`'s limit on the federated user's name.
const MAX_FEDERATION_NAME_LEN: usize = 32;
/// Managed policies one session may name (`PolicyArns`).
pub(super) const MAX_SESSION_POLICY_ARNS: usize = 10;
/// The default session name: the lease id, so CloudTrail entries lead back
/// to the lease.
const DEFAULT_SESSION_NAME: &str = "lessor-{lease_id}";

/// The role to assume and the session name of a role's table, each error
/// naming its key through `key`.
pub(super) fn parse_keys(
    raw: &AwsRoleOptions,
    credential_type: CredentialType,
    key: &dyn Fn(&str) -> String,
) -> Result<(Option<RoleArn>, SessionNameTemplate), ConfigError> {
    use CredentialType::*;
    let role_arn =
        match (&raw.role_arn, credential_type) {
            (Some(arn), _) => Some(RoleArn::parse(arn).map_err(|e| ConfigError::new(key("role_arn"), e))?),
            (None, AssumedRole) => return Err(ConfigError::new(
                key("role_arn"),
                "required for credential_type assumed_role, e.g. \"arn:aws:iam::123456789012:role/deployer\"",
            )),
            (None, _) => None,
        };

    let name_limit = if credential_type == FederationToken { MAX_FEDERATION_NAME_LEN } else { MAX_NAME_LEN };
    let template = raw.session_name_template.as_deref().unwrap_or(DEFAULT_SESSION_NAME);
    let session_name = SessionNameTemplate::parse(template, name_limit)
        .map_err(|e| ConfigError::new(key("session_name_template"), format!("{template:?}: {e}")))?;
    Ok((role_arn, session_name))
}

/// Checks a role's TTLs against what STS issues. A TTL under 15 min is
/// allowed (it is raised to 15 min at issuance); a `max_ttl` under it is
/// not, since no token could end when the lease does.
pub(super) fn check_ttls(
    ty: CredentialType,
    role: &str,
    default_ttl: Duration,
    max_ttl: Duration,
) -> Result<(), ConfigError> {
    let Some(limit) = ty.max_ttl() else { return Ok(()) };
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn durations_read_like_the_config() {
        assert_eq!(human(Duration::from_secs(900)), "15m");
        assert_eq!(human(Duration::from_secs(12 * 3600)), "12h");
        assert_eq!(human(Duration::from_secs(36 * 3600)), "1d12h");
        assert_eq!(human(Duration::from_secs(3661)), "1h1m1s");
    }
}
