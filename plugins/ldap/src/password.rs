//! What lessor writes in place of a password.
//!
//! OpenLDAP stores `userPassword` as given: a plaintext value stays
//! plaintext in the database, its backups and its replication log. So
//! lessor hashes the password itself and sends only the hash, as it sends
//! PostgreSQL a SCRAM verifier: `{SSHA512}` (slapd's `pw-sha2` module) by
//! default, or `{ARGON2}` (its `argon2` module). The plaintext still
//! crosses the wire once, in the simple bind that tests a login.
//!
//! Active Directory takes no hash: a password is set by writing
//! `unicodePwd`, the password in double quotes, as UTF-16LE bytes, over an
//! encrypted connection; the server hashes it.

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine as _;
use rand::RngCore;
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

/// Which directory the server is: it decides how a password is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Schema {
    /// OpenLDAP (or any server taking a hashed `userPassword`).
    #[default]
    #[serde(rename = "openldap")]
    OpenLdap,
    /// Active Directory: `unicodePwd`, over TLS only.
    #[serde(rename = "ad")]
    Ad,
}

/// How an OpenLDAP `userPassword` is hashed before it is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PasswordHash {
    /// `{SSHA512}`: base64 of SHA-512(password ‖ salt) ‖ salt, 16 random
    /// salt bytes. slapd verifies it with its `pw-sha2` module
    /// (`olcModuleLoad: pw-sha2`).
    #[default]
    Ssha512,
    /// `{ARGON2}` with an argon2id PHC string (19 MiB, 2 passes, 1 lane).
    /// slapd verifies it with its `argon2` module (`olcModuleLoad: argon2`).
    Argon2,
}

impl PasswordHash {
    /// The `userPassword` value for `password`. Argon2 costs tens of
    /// milliseconds of CPU: call it off the async threads.
    pub fn hash(self, password: &str) -> Zeroizing<String> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        match self {
            Self::Ssha512 => ssha512(password, &salt),
            Self::Argon2 => {
                let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
                let phc = argon2::Argon2::default()
                    .hash_password(password.as_bytes(), &salt)
                    .expect("the default argon2 parameters hash any password");
                Zeroizing::new(format!("{{ARGON2}}{phc}"))
            }
        }
    }
}

fn ssha512(password: &str, salt: &[u8]) -> Zeroizing<String> {
    let mut hasher = Sha512::new();
    hasher.update(password.as_bytes());
    hasher.update(salt);
    let mut both = Zeroizing::new(hasher.finalize().to_vec());
    both.extend_from_slice(salt);
    Zeroizing::new(format!("{{SSHA512}}{}", base64::engine::general_purpose::STANDARD.encode(&*both)))
}

/// Active Directory's `unicodePwd` value: `"password"` in UTF-16LE.
pub fn unicode_pwd(password: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(format!("\"{password}\"").encode_utf16().flat_map(u16::to_le_bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash as Phc, PasswordVerifier};

    #[test]
    fn ad_unicode_pwd_is_the_quoted_password_in_utf16le() {
        assert_eq!(*unicode_pwd("pw"), [b'"', 0, b'p', 0, b'w', 0, b'"', 0]);
        // Outside ASCII: one UTF-16 unit per character here, two bytes each.
        assert_eq!(*unicode_pwd("é"), [b'"', 0, 0xe9, 0, b'"', 0]);
    }

    #[test]
    fn ssha512_is_the_digest_of_password_and_salt_then_the_salt() {
        let salt = [7u8; 16];
        let value = ssha512("secret", &salt);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(value.strip_prefix("{SSHA512}").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 64 + 16);
        assert_eq!(&raw[64..], salt);
        assert_eq!(raw[..64], Sha512::digest([b"secret".as_slice(), &salt].concat())[..]);
        // Salted: two hashes of one password differ.
        assert_ne!(*PasswordHash::Ssha512.hash("x"), *PasswordHash::Ssha512.hash("x"));
    }

    #[test]
    fn argon2_is_a_verifiable_argon2id_phc_string() {
        let value = PasswordHash::Argon2.hash("secret");
        let phc = value.strip_prefix("{ARGON2}").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let parsed = Phc::new(phc).unwrap();
        assert!(argon2::Argon2::default().verify_password(b"secret", &parsed).is_ok());
        assert!(argon2::Argon2::default().verify_password(b"other", &parsed).is_err());
    }
}
