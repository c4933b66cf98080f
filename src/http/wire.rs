//! The daemon's domain types as the socket API shows them: the one place
//! they become the client crate's types (`lessor_client::types`), which
//! are the wire format (the daemon serializes them, clients deserialize
//! them). A handler never lists a wire type's fields itself: it converts
//! here, and adds only what the answer alone knows (a renewal's TTL).
//!
//! `From` where the conversion is total; a function where it can fail (a
//! plugin's credential of a kind the API has no shape for). A lease and a
//! static account need none: the broker and the rotator hold them as the
//! client crate's `Lease` and `StaticInfo` already. Vault's shapes
//! are not here: `vault` builds them from these.

use lessor_client::types::{Credential, Issued, WatchEvent};

use axum::http::StatusCode;

use super::ApiError;
use crate::broker;
use crate::events::Event;

/// A plugin's credential as the API hands it out; `None` for a kind the
/// API has no shape for (the plugin SDK's enum is open to new kinds).
pub fn credential(credential: &lessor_plugin::Credential) -> Option<Credential> {
    Some(match credential {
        lessor_plugin::Credential::Database { username, password } => {
            Credential::Database { username: username.clone(), password: password.clone() }
        }
        lessor_plugin::Credential::Directory { username, distinguished_name, password } => {
            Credential::Directory {
                username: username.clone(),
                distinguished_name: distinguished_name.clone(),
                password: password.clone(),
            }
        }
        lessor_plugin::Credential::Aws { access_key_id, secret_access_key, session_token, expiration } => {
            Credential::Aws {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expiration: *expiration,
            }
        }
        _ => return None,
    })
}

/// The answer when [`credential`] has no shape for a plugin's credential,
/// as `api` (`"API"`, `"Vault API"`) says it.
pub(crate) fn unshown(api: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the plugin made a credential of a kind the {api} cannot show"),
    )
}

/// A new credential and its lease (`POST /v1/creds/{role}`); `None` as
/// for [`credential`].
pub fn issued(issued: &broker::Issued) -> Option<Issued> {
    let lease = &issued.lease;
    Some(Issued {
        lease_id: lease.id.to_string(),
        role: lease.role.clone(),
        plugin: issued.plugin.to_string(),
        ttl_seconds: (lease.expires_at - lease.issued_at).num_seconds(),
        expires_at: lease.expires_at,
        renewable: lease.renewable,
        credential: credential(&issued.credential)?,
    })
}

/// An event as a watcher sees it (whether this watcher may see it at all
/// is the watch route's check).
impl From<&Event> for WatchEvent {
    fn from(event: &Event) -> Self {
        match event {
            Event::Rotated(rotation) => Self::Rotated(rotation.clone()),
            Event::LeaseExpiring(lease) => Self::LeaseExpiring { lease: (**lease).clone() },
            Event::LeaseRevoked(lease) => Self::LeaseRevoked { lease: (**lease).clone() },
        }
    }
}
