//! The socket API's answers, defined once: the daemon serializes these
//! types and clients deserialize them (DESIGN §5).
//!
//! Secrets are [`SecretString`]s: `Debug` redacts them, and they are
//! zeroized when dropped. Serializing one writes the secret, which is what
//! the daemon's answer is for; nothing else serializes these types.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::lease::{Lease, LeaseId, LeaseOwner, LeaseState, Renewed};

/// A secret as a JSON string.
mod secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(SecretString::from)
    }
}

/// An optional secret as a JSON string or `null`.
mod optional_secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match secret {
            Some(secret) => s.serialize_some(secret.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

/// A credential as the API hands it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Credential {
    /// An LDAP entry: the name it logs in with, the distinguished name a
    /// simple bind takes, and its password. (First: untagged, a directory
    /// credential would otherwise read as a database one.)
    Directory {
        username: String,
        distinguished_name: String,
        #[serde(with = "secret")]
        password: SecretString,
    },
    /// A PostgreSQL role or MySQL user.
    Database {
        username: String,
        #[serde(with = "secret")]
        password: SecretString,
    },
    /// An AWS access key, with a session token for STS credentials.
    Aws {
        access_key_id: String,
        #[serde(with = "secret")]
        secret_access_key: SecretString,
        #[serde(default, with = "optional_secret", skip_serializing_if = "Option::is_none")]
        session_token: Option<SecretString>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiration: Option<DateTime<Utc>>,
    },
}

impl Credential {
    /// The name the backend knows the credential by: the database user,
    /// the entry's distinguished name, or the access key id.
    pub fn identity(&self) -> &str {
        match self {
            Self::Database { username, .. } => username,
            Self::Directory { distinguished_name, .. } => distinguished_name,
            Self::Aws { access_key_id, .. } => access_key_id,
        }
    }

    /// Whether two credentials are the same (compared in constant time is
    /// not needed: both are the caller's own).
    pub fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Database { username: a, password: p }, Self::Database { username: b, password: q }) => {
                a == b && p.expose_secret() == q.expose_secret()
            }
            (
                Self::Directory { distinguished_name: a, password: p, .. },
                Self::Directory { distinguished_name: b, password: q, .. },
            ) => a == b && p.expose_secret() == q.expose_secret(),
            (
                Self::Aws { access_key_id: a, secret_access_key: p, .. },
                Self::Aws { access_key_id: b, secret_access_key: q, .. },
            ) => a == b && p.expose_secret() == q.expose_secret(),
            _ => false,
        }
    }
}

/// `POST /v1/creds/{role}`: a new credential and its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub lease_id: String,
    pub role: String,
    /// The plugin that made it: `postgres`, `mysql` or `aws`.
    pub plugin: String,
    pub ttl_seconds: i64,
    pub expires_at: DateTime<Utc>,
    pub renewable: bool,
    pub credential: Credential,
}

/// A static account's credential: the password only where the answer
/// hands it out (`GET /v1/static/{name}`), never in a rotation's answer or
/// an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StaticCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, with = "optional_secret", skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, with = "optional_secret", skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretString>,
}

impl StaticCredential {
    /// The credential, when the answer carried its secret.
    pub fn to_credential(&self) -> Option<Credential> {
        match (&self.username, &self.password, &self.access_key_id, &self.secret_access_key) {
            (Some(username), Some(password), _, _) => {
                Some(Credential::Database { username: username.clone(), password: password.clone() })
            }
            (_, _, Some(key), Some(secret)) => Some(Credential::Aws {
                access_key_id: key.clone(),
                secret_access_key: secret.clone(),
                session_token: None,
                expiration: None,
            }),
            _ => None,
        }
    }
}

/// Where a static account's rotation stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RotationState {
    /// The phase a rotation under way has reached.
    pub in_progress: Option<String>,
    pub failures: u32,
    pub last_error: Option<String>,
}

/// A static account (`GET /v1/static/{name}`, and a rotation's answer
/// without the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticInfo {
    pub name: String,
    /// `single`, `alternating` or `access_key`.
    pub strategy: String,
    pub credential: StaticCredential,
    pub version: u64,
    pub rotated_at: Option<DateTime<Utc>>,
    pub next_rotation_at: Option<DateTime<Utc>>,
    pub previous_username: Option<String>,
    /// Until when the previous credential keeps working.
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub schedule: String,
    pub rotation: RotationState,
}

impl StaticInfo {
    /// The same account without its secret, for an answer that must not
    /// carry it (a rotation's, a watch snapshot's).
    pub fn without_secret(mut self) -> Self {
        self.credential.password = None;
        self.credential.secret_access_key = None;
        self
    }
}

/// One line of `GET /v1/watch`.
/// Where a static account stands after a rotation, as a `rotated` event
/// tells it: never the secret (read that with `GET /v1/static/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub account: String,
    pub version: u64,
    /// The username of the new current credential.
    pub username: String,
    pub rotated_at: Option<DateTime<Utc>>,
    /// The username of the credential that keeps working until
    /// `previous_valid_until`.
    pub previous_username: Option<String>,
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub next_rotation_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// First, and again after the watcher fell behind: everything the
    /// caller may read now. A static account that cannot be read is
    /// `{name, version: 0, error}`.
    Snapshot {
        at: DateTime<Utc>,
        #[serde(rename = "static")]
        statics: Vec<Value>,
        leases: Vec<Lease>,
    },
    /// A static account has a new current credential (read it with `GET
    /// /v1/static/{name}`; the event never carries it).
    Rotated(Rotation),
    /// A lease reached two thirds of its TTL.
    LeaseExpiring { lease: Lease },
    /// A lease was revoked (expiry, its owner or an operator).
    LeaseRevoked { lease: Lease },
    /// The stream is alive (every 15 s).
    Heartbeat { at: DateTime<Utc> },
    /// The watcher fell behind and missed this many events; a snapshot
    /// follows.
    Lagged { missed: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_shows_no_secret() {
        let c = Credential::Database {
            username: "v_app_x".into(),
            password: SecretString::from("hunter2-secret"),
        };
        let text = format!("{c:?}");
        assert!(text.contains("v_app_x") && !text.contains("hunter2-secret"), "{text}");
        let s =
            StaticCredential { password: Some(SecretString::from("s3cret-static")), ..Default::default() };
        assert!(!format!("{s:?}").contains("s3cret-static"));
    }

    #[test]
    fn credentials_read_back_as_written() {
        let aws = json!({"access_key_id": "AKIA1", "secret_access_key": "sk", "session_token": "tok", "expiration": "2026-12-03T10:00:00Z"});
        let c: Credential = serde_json::from_value(aws.clone()).unwrap();
        assert!(matches!(&c, Credential::Aws { session_token: Some(_), .. }));
        assert_eq!(serde_json::to_value(&c).unwrap(), aws);
        let db = json!({"username": "u", "password": "p"});
        let c: Credential = serde_json::from_value(db.clone()).unwrap();
        assert_eq!(c.identity(), "u");
        assert_eq!(serde_json::to_value(&c).unwrap(), db);
        // A directory credential is not mistaken for a database one.
        let dir = json!({"username": "u", "distinguished_name": "cn=u,ou=people,dc=x", "password": "p"});
        let c: Credential = serde_json::from_value(dir.clone()).unwrap();
        assert!(matches!(&c, Credential::Directory { .. }), "{c:?}");
        assert_eq!(c.identity(), "cn=u,ou=people,dc=x");
        assert_eq!(serde_json::to_value(&c).unwrap(), dir);
        let only_name: StaticCredential = serde_json::from_value(json!({"username": "u"})).unwrap();
        assert!(only_name.to_credential().is_none());
        assert_eq!(serde_json::to_value(&only_name).unwrap(), json!({"username": "u"}));
    }

    #[test]
    fn watch_events_are_tagged() {
        let e: WatchEvent =
            serde_json::from_value(json!({"event": "heartbeat", "at": "2026-12-03T10:00:00Z"})).unwrap();
        assert!(matches!(e, WatchEvent::Heartbeat { .. }));
        let e = WatchEvent::Lagged { missed: 3 };
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"event": "lagged", "missed": 3}));
    }
}
