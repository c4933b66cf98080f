//! SCRAM-SHA-256 verifiers for `PASSWORD '…'`, so the plaintext never
//! reaches PostgreSQL (DESIGN §1.4).
//!
//! The value `postgres_protocol::password::scram_sha_256` makes
//! (`SCRAM-SHA-256$<iterations>:salt$StoredKey:ServerKey`, RFC 5802/7677),
//! with the connection's `scram_iterations` (default 4096, PostgreSQL's
//! own and the lowest every client checked accepts; the iterations only
//! stretch a guessable password, and lessor's are 95 to 760 random bits, so
//! fewer lose nothing where no old pgjdbc connects: see the PostgreSQL chapter of the manual, docs/src/backends/postgresql.md). The
//! keyed HMAC state is built once and
//! cloned for each iteration instead of re-keyed every time. Passwords
//! lessor generates are ASCII alphanumeric, for which SASLprep changes
//! nothing; other input is SASLprepped first, as libpq does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const SALT_LEN: usize = 16;

/// The iteration counts `scram_iterations` may take: at most what clients
/// accept from a server. tokio-postgres (lessor's own login tests and admin
/// connections), pgjdbc and node-postgres refuse more than 100 000.
pub const ITERATIONS_RANGE: std::ops::RangeInclusive<u32> = 1..=100_000;

/// A verifier for `password` with a fresh random salt.
pub fn verifier(password: &str, iterations: u32) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    // SASLprep, as libpq and the server apply it; it changes nothing in the
    // alphanumeric passwords lessor generates, and a password it refuses
    // is used as it is, as libpq does.
    if password.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return verifier_with_salt(password.as_bytes(), &salt, iterations);
    }
    match stringprep::saslprep(password) {
        Ok(prepared) => verifier_with_salt(prepared.as_bytes(), &salt, iterations),
        Err(_) => verifier_with_salt(password.as_bytes(), &salt, iterations),
    }
}

fn verifier_with_salt(password: &[u8], salt: &[u8], iterations: u32) -> String {
    let salted = pbkdf2_sha256(password, salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one 32-byte block (RFC 8018 §5.2).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(password).expect("HMAC takes any key length");
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut block: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = block;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&block);
        block = mac.finalize().into_bytes().into();
        for (r, b) in result.iter_mut().zip(block) {
            *r ^= b;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference value, made with Python's hashlib for the same salt:
    /// `hashlib.pbkdf2_hmac('sha256', b'password', b'saltsaltsaltsalt', 4096)`.
    #[test]
    fn pbkdf2_matches_the_reference() {
        let out = pbkdf2_sha256(b"password", b"saltsaltsaltsalt", 4096);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PBKDF2_REFERENCE);
    }

    #[test]
    fn verifier_has_postgres_format_and_fresh_salt() {
        let a = verifier("Abc123", 4096);
        let b = verifier("Abc123", 4096);
        assert!(a.starts_with("SCRAM-SHA-256$4096:"), "{a}");
        assert!(verifier("Abc123", 1).starts_with("SCRAM-SHA-256$1:"));
        assert_ne!(a, b, "salts must differ");
        let (_, keys) = a.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(STANDARD.decode(stored).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(server).unwrap().len(), 32);
    }

    /// One iteration is HMAC(password, salt || 1), as
    /// `hashlib.pbkdf2_hmac('sha256', b'password', b'saltsaltsaltsalt', 1)` gives.
    /// Non-ASCII input goes through SASLprep (a no-break space becomes a
    /// space), then the same PBKDF2 with the configured count.
    #[test]
    fn other_passwords_are_saslprepped_and_keep_the_count() {
        let v = verifier("pass\u{00A0}word", 7);
        assert!(v.starts_with("SCRAM-SHA-256$7:"), "{v}");
        let salt = STANDARD.decode(v.split(['$', ':']).nth(2).unwrap()).unwrap();
        assert_eq!(v, verifier_with_salt(b"pass word", &salt, 7));
    }

    #[test]
    fn one_iteration_is_one_hmac() {
        let out = pbkdf2_sha256(b"password", b"saltsaltsaltsalt", 1);
        let mut salted = b"saltsaltsaltsalt".to_vec();
        salted.extend_from_slice(&1u32.to_be_bytes());
        assert_eq!(out, hmac(b"password", &salted));
    }

    const PBKDF2_REFERENCE: &str = "16e35b12b41f465ca64d069578d750059775ccad5df3ad53d6b204acb122d1ee";

    /// The whole verifier, computed independently with Python's hashlib and
    /// hmac for the same salt.
    #[test]
    fn verifier_matches_the_reference() {
        assert_eq!(verifier_with_salt(b"password", b"saltsaltsaltsalt", 4096), "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$CozjiHjNmiMjBgH9gZ7qn0QWud6nrVP6E72IBh477bQ=:VKers2x8MllK1Rh7LZLqtj6KOTzoFWJpIaokMX3blS0=");
    }
}
