//! Between the wire messages and the SDK's types. Secrets stay in
//! [`SecretString`] on this side and cross only as message fields.

use chrono::{DateTime, TimeZone, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::v1;
use crate::{Credential, PluginError};

/// A [`PluginError`] as the wire carries it.
pub fn error_to_wire(error: &PluginError) -> v1::Error {
    use v1::error::Kind;
    let (kind, message, retry_after) = match error {
        PluginError::Unavailable { message } => (Kind::Unavailable, message.clone(), None),
        PluginError::Transient { message, retry_after } => (Kind::Transient, message.clone(), *retry_after),
        PluginError::Rejected { message } => (Kind::Rejected, message.clone(), None),
        PluginError::InvalidRole { message } => (Kind::InvalidRole, message.clone(), None),
        PluginError::Unsupported { operation } => (Kind::Unsupported, operation.to_string(), None),
        PluginError::Internal { message } => (Kind::Internal, message.clone(), None),
        PluginError::Down { message, .. } => (Kind::Unavailable, message.clone(), None),
    };
    v1::Error {
        kind: kind as i32,
        message,
        retry_after_ms: retry_after.map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX)),
    }
}

/// A wire error as a [`PluginError`]; `operation` names the call, for an
/// "unsupported" answer.
pub fn error_from_wire(error: v1::Error, operation: &'static str) -> PluginError {
    use v1::error::Kind;
    let message = error.message;
    match Kind::try_from(error.kind).unwrap_or(Kind::Internal) {
        Kind::Unavailable => PluginError::Unavailable { message },
        Kind::Transient => PluginError::Transient {
            message,
            retry_after: (error.retry_after_ms > 0)
                .then(|| std::time::Duration::from_millis(error.retry_after_ms)),
        },
        Kind::Rejected => PluginError::Rejected { message },
        Kind::InvalidRole => PluginError::InvalidRole { message },
        Kind::Unsupported => PluginError::Unsupported { operation },
        Kind::Internal | Kind::Unspecified => PluginError::Internal { message },
    }
}

/// Milliseconds since the Unix epoch.
pub fn time_to_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// An instant from milliseconds since the Unix epoch; out of range is an
/// internal error (the peer sent nonsense).
pub fn ms_to_time(ms: i64) -> Result<DateTime<Utc>, PluginError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| PluginError::Internal { message: format!("timestamp {ms} ms is out of range") })
}

/// A credential as the wire carries it.
pub fn credential_to_wire(credential: &Credential) -> v1::Credential {
    use v1::credential::Kind;
    let kind = match credential {
        Credential::Database { username, password } => Kind::Database(v1::DatabaseCredential {
            username: username.clone(),
            password: password.expose_secret().to_string(),
        }),
        Credential::Aws { access_key_id, secret_access_key, session_token, expiration } => {
            Kind::Aws(v1::AwsCredential {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.expose_secret().to_string(),
                session_token: session_token.as_ref().map(|t| t.expose_secret().to_string()),
                expiration_ms: expiration.map(time_to_ms),
            })
        }
        Credential::Directory { username, distinguished_name, password } => {
            Kind::Directory(v1::DirectoryCredential {
                username: username.clone(),
                distinguished_name: distinguished_name.clone(),
                password: password.expose_secret().to_string(),
            })
        }
    };
    v1::Credential { kind: Some(kind) }
}

/// A wire credential; a missing one is an internal error.
pub fn credential_from_wire(credential: Option<v1::Credential>) -> Result<Credential, PluginError> {
    use v1::credential::Kind;
    let missing =
        || PluginError::Internal { message: "the plugin answered a create with no credential".into() };
    Ok(match credential.and_then(|c| c.kind).ok_or_else(missing)? {
        Kind::Database(c) => Credential::Database { username: c.username, password: c.password.into() },
        Kind::Aws(c) => Credential::Aws {
            access_key_id: c.access_key_id,
            secret_access_key: SecretString::from(c.secret_access_key),
            session_token: c.session_token.map(SecretString::from),
            expiration: c.expiration_ms.map(ms_to_time).transpose()?,
        },
        Kind::Directory(c) => Credential::Directory {
            username: c.username,
            distinguished_name: c.distinguished_name,
            password: c.password.into(),
        },
    })
}

/// A TOML table of options as JSON object text (dates become RFC 3339
/// strings), the form every language can read.
pub fn options_to_json(options: &toml::Table) -> String {
    fn value(v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => s.clone().into(),
            toml::Value::Integer(i) => (*i).into(),
            toml::Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            toml::Value::Boolean(b) => (*b).into(),
            toml::Value::Datetime(d) => d.to_string().into(),
            toml::Value::Array(a) => a.iter().map(value).collect(),
            toml::Value::Table(t) => table(t),
        }
    }
    fn table(t: &toml::Table) -> serde_json::Value {
        t.iter().map(|(k, v)| (k.clone(), value(v))).collect::<serde_json::Map<_, _>>().into()
    }
    table(options).to_string()
}

/// JSON object text back into a TOML table, for a Rust plugin served out
/// of process. `null` has no TOML form and is refused.
pub fn json_to_options(text: &str) -> Result<toml::Table, String> {
    fn value(v: serde_json::Value) -> Result<toml::Value, String> {
        Ok(match v {
            serde_json::Value::Null => return Err("null has no TOML form".into()),
            serde_json::Value::Bool(b) => b.into(),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().ok_or("a number out of range")?.into(),
            },
            serde_json::Value::String(s) => s.into(),
            serde_json::Value::Array(a) => a.into_iter().map(value).collect::<Result<Vec<_>, _>>()?.into(),
            serde_json::Value::Object(o) => toml::Value::Table(table(o)?),
        })
    }
    fn table(o: serde_json::Map<String, serde_json::Value>) -> Result<toml::Table, String> {
        o.into_iter().map(|(k, v)| value(v).map(|v| (k, v))).collect()
    }
    if text.is_empty() {
        return Ok(toml::Table::new());
    }
    match serde_json::from_str(text).map_err(|e| format!("options are not JSON: {e}"))? {
        serde_json::Value::Object(o) => table(o),
        _ => Err("options are not a JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_cross_the_wire_and_back() {
        let options: toml::Table =
            toml::from_str("a = 1\nb = \"x\"\nc = [1.5, true]\nd = { e = 1979-05-27T07:32:00Z }\nf = []\n")
                .unwrap();
        let json = options_to_json(&options);
        let back = json_to_options(&json).unwrap();
        assert_eq!(back["a"].as_integer(), Some(1));
        assert_eq!(back["b"].as_str(), Some("x"));
        assert_eq!(back["c"].as_array().unwrap()[0].as_float(), Some(1.5));
        assert_eq!(back["d"]["e"].as_str(), Some("1979-05-27T07:32:00Z"));
        assert!(json_to_options("[1]").unwrap_err().contains("not a JSON object"));
        assert!(json_to_options("{\"a\": null}").unwrap_err().contains("null"));
    }

    #[test]
    fn every_error_kind_survives_the_wire() {
        let errors = [
            PluginError::Unavailable { message: "u".into() },
            PluginError::Transient {
                message: "t".into(),
                retry_after: Some(std::time::Duration::from_millis(7)),
            },
            PluginError::Rejected { message: "r".into() },
            PluginError::InvalidRole { message: "i".into() },
            PluginError::Unsupported { operation: "renew" },
            PluginError::Internal { message: "b".into() },
        ];
        for error in errors {
            let back = error_from_wire(error_to_wire(&error), "renew");
            assert_eq!(format!("{back:?}"), format!("{error:?}"));
        }
    }
}
