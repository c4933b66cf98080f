//! A `[connections.NAME]` table's plugin keys: as written
//! ([`AwsConnectionOptions`]) and validated ([`ConnectionSettings`]): the
//! region, the endpoints, and lessor's own key, whose secret comes from the
//! broker's `password_file` / `password_env`, never from the table.

use std::fmt;

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::Deserialize;

use lessor_plugin::options::parse_table;

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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn table(src: &str) -> toml::Table {
        src.parse().unwrap()
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
}
