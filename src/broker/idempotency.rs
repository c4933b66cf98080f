//! `Idempotency-Key`: the same key from the same owner (uid and policy)
//! for the same role answers the lease and credential it got the first
//! time instead of making another user, for as long as that lease is
//! active. A restarting sidecar then does not mint a user per start.
//!
//! The credential is kept only in memory, sealed (ChaCha20-Poly1305 under
//! a key made at start-up and never written anywhere), and only until its
//! lease ends. The store keeps the key's digest on the lease, never the key
//! or the credential: after a restart the key still finds its lease, but
//! the credential is gone, and the answer is 409 (revoke it or use a new
//! key) rather than a second user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::Utc;
use lessor_plugin::Credential;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Broker, BrokerError, Issued};
use crate::config::Duration;
use crate::lease::LeaseState;
use crate::policy::Caller;

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 256;

/// Credentials answered for idempotency keys, sealed, by digest.
pub(crate) struct Remembered {
    cipher: ChaCha20Poly1305,
    entries: Mutex<HashMap<String, Entry>>,
    /// One issuance per digest at a time: the second request waits for the
    /// first and then finds its answer.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Entry {
    lease_id: crate::lease::LeaseId,
    expires_at: chrono::DateTime<Utc>,
    plugin: &'static str,
    nonce: Nonce,
    sealed: Vec<u8>,
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered")
            .field("entries", &self.entries.lock().unwrap().len())
            .finish_non_exhaustive()
    }
}

impl Default for Remembered {
    fn default() -> Self {
        let key: Key = ChaCha20Poly1305::generate_key(&mut OsRng);
        Self { cipher: ChaCha20Poly1305::new(&key), entries: Mutex::default(), locks: Mutex::default() }
    }
}

impl Remembered {
    fn seal(&self, credential: &Credential) -> Option<(Nonce, Vec<u8>)> {
        let plain = Zeroizing::new(credential_json(credential)?.to_string().into_bytes());
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        Some((nonce, self.cipher.encrypt(&nonce, plain.as_slice()).ok()?))
    }

    fn open(&self, entry: &Entry) -> Option<Credential> {
        let plain = Zeroizing::new(self.cipher.decrypt(&entry.nonce, entry.sealed.as_slice()).ok()?);
        credential_from_json(&serde_json::from_slice(&plain).ok()?)
    }

    /// Drops entries whose lease has expired, when the map has grown.
    fn prune(entries: &mut HashMap<String, Entry>) {
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            let now = Utc::now();
            entries.retain(|_, e| e.expires_at > now);
        }
    }
}

fn credential_json(credential: &Credential) -> Option<serde_json::Value> {
    Some(match credential {
        Credential::Database { username, password } => {
            serde_json::json!({ "db": [username, password.expose_secret()] })
        }
        Credential::Directory { username, distinguished_name, password } => {
            serde_json::json!({ "dir": [username, distinguished_name, password.expose_secret()] })
        }
        Credential::Aws { access_key_id, secret_access_key, session_token, expiration } => {
            serde_json::json!({
                "aws": [access_key_id, secret_access_key.expose_secret(),
                        session_token.as_ref().map(|t| t.expose_secret()), expiration],
            })
        }
        _ => return None,
    })
}

fn credential_from_json(value: &serde_json::Value) -> Option<Credential> {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if let Some(db) = value.get("db") {
        return Some(Credential::Database {
            username: text(&db[0])?,
            password: SecretString::from(text(&db[1])?),
        });
    }
    if let Some(dir) = value.get("dir") {
        return Some(Credential::Directory {
            username: text(&dir[0])?,
            distinguished_name: text(&dir[1])?,
            password: SecretString::from(text(&dir[2])?),
        });
    }
    let aws = value.get("aws")?;
    Some(Credential::Aws {
        access_key_id: text(&aws[0])?,
        secret_access_key: SecretString::from(text(&aws[1])?),
        session_token: text(&aws[2]).map(SecretString::from),
        expiration: serde_json::from_value(aws[3].clone()).ok()?,
    })
}

/// Checks a key as sent in the header.
pub fn check_key(key: &str) -> Result<(), BrokerError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BrokerError::BadRequest {
            message: format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"),
        });
    }
    Ok(())
}

impl Broker {
    /// Issues `role` for `key`: the first time a new lease, afterwards the
    /// same lease and credential while it is active.
    pub async fn issue_idempotent(
        self: &Arc<Self>,
        role: String,
        ttl: Option<Duration>,
        caller: Caller,
        key: &str,
    ) -> Result<Issued, BrokerError> {
        check_key(key)?;
        let grant = caller.may_issue(&role)?;
        let owner = caller.owner(&grant);
        let digest = hex::encode(Sha256::digest(format!(
            "{}\0{}\0{role}\0{key}",
            owner.uid,
            owner.policy.as_deref().unwrap_or("")
        )));
        let lock = self.remembered.locks.lock().unwrap().entry(digest.clone()).or_default().clone();
        let outcome = {
            let _one_at_a_time = lock.lock().await;
            self.issue_for_digest(role, ttl, caller, &digest).await
        };
        let mut locks = self.remembered.locks.lock().unwrap();
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&digest);
        }
        outcome
    }

    async fn issue_for_digest(
        self: &Arc<Self>,
        role: String,
        ttl: Option<Duration>,
        caller: Caller,
        digest: &str,
    ) -> Result<Issued, BrokerError> {
        if let Some(lease) = self.store.find_idempotent(digest).await? {
            let live = lease.state == LeaseState::Active && lease.expires_at > Utc::now();
            if live {
                let remembered = {
                    let entries = self.remembered.entries.lock().unwrap();
                    entries.get(digest).filter(|e| e.lease_id == lease.id).and_then(|entry| {
                        let credential = self.remembered.open(entry)?;
                        Some(Issued { lease: lease.clone(), plugin: entry.plugin, credential, shared: false })
                    })
                };
                return remembered.ok_or_else(|| BrokerError::Conflict {
                    id: lease.id.clone(),
                    state: "active",
                    message: "it was issued for this Idempotency-Key, but its credential is no longer \
                              available (lessor restarted since): revoke the lease, or send a new key"
                        .into(),
                });
            }
        }
        let issued = self.issue_detached_with(role, ttl, caller, Some(digest.to_string())).await?;
        if let Some((nonce, sealed)) = self.remembered.seal(&issued.credential) {
            let mut entries = self.remembered.entries.lock().unwrap();
            Remembered::prune(&mut entries);
            let entry = Entry {
                lease_id: issued.lease.id.clone(),
                expires_at: issued.lease.max_expires_at,
                plugin: issued.plugin,
                nonce,
                sealed,
            };
            entries.insert(digest.to_string(), entry);
        }
        Ok(issued)
    }
}
