//! The lease model: what lessor remembers about every credential it made.
//!
//! A lease never holds a secret. It holds what is needed to find and remove
//! the credential again (connection, role, username, plugin data) and where
//! it stands in its life:
//!
//! ```text
//! pending ──▶ active ──▶ revoking ──▶ revoked
//!    │                      │  ▲
//!    └──────▶ revoking      ▼  │ (slow retry)
//!                        irrevocable
//! ```
//! `pending` is written before the backend is touched, so a crash at any
//! instant leaves a record of every username that may exist.

/// One lease, and its id, state and owner: the API's own types (one
/// definition, in lessor-client), which the daemon's lease model is.
pub use lessor_client::types::{Lease, LeaseId, LeaseOwner as Owner, LeaseState};

/// The length of a generated id's random part.
pub const ID_RANDOM_LEN: usize = 22;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A fresh lease id for `role`: `<role>/<random>`, so that a prefix
/// selects a role's leases, with [`ID_RANDOM_LEN`] (22) random characters
/// (about 131 bits).
pub fn new_id(role: &str) -> LeaseId {
    let mut id = String::with_capacity(role.len() + 1 + ID_RANDOM_LEN);
    id.push_str(role);
    id.push('/');
    lessor_plugin::names::push_random(&mut id, ID_ALPHABET, ID_RANDOM_LEN);
    LeaseId::from_store(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_role_and_parse_back() {
        let id = new_id("app_ro");
        assert_eq!(id.role(), "app_ro");
        assert_eq!(LeaseId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(id, new_id("app_ro"));
    }
}
