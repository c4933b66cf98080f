//! Secrets at rest: static-account passwords are stored sealed with an AEAD
//! (ChaCha20-Poly1305, RustCrypto's `chacha20poly1305`) under a 32-byte key
//! read from `server.seal_key_file`.
//!
//! Every sealed value is bound to what it is the secret of (the account,
//! the version, the username) through the associated data, so a sealed
//! blob copied onto another account or version does not open. The key file
//! may hold the 32 bytes raw, as 64 hex characters, or as base64; it must
//! not be readable by group or others, and the key never appears in a log
//! or an error.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use rand::TryRngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The format byte in front of every sealed value.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a value not sealed or opened. Never
/// carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key file could not be read, has the wrong size or format, or is
    /// readable by group or others.
    #[error("seal key {path}: {message}")]
    Key { path: String, message: String },
    /// A sealed value did not open: another key, another account or
    /// version, or a damaged store.
    #[error("cannot open the sealed secret of {what}: wrong seal key, or the stored value was altered")]
    Open { what: String },
}

/// Seals and opens secrets with the daemon's key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads the key file, refusing one that group or others can read.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let fail = |message: String| SealError::Key { path: path.display().to_string(), message };
        lessor_plugin::files::check_private(path).map_err(fail)?;
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?);
        let key = parse_key(&bytes).map_err(|m| fail(m.to_string()))?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8; 32]) -> Self {
        Self { cipher: ChaCha20Poly1305::new(Key::from_slice(key)) }
    }

    /// Seals `secret`, bound to `context` (account, version, username).
    pub fn seal(&self, context: &str, secret: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.try_fill_bytes(&mut nonce).expect("the OS random source works");
        let payload = Payload { msg: secret.expose_secret().as_bytes(), aad: context.as_bytes() };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("ChaCha20-Poly1305 seals any input");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<SecretString, SealError> {
        let fail = || SealError::Open { what: context.to_string() };
        let (format, rest) = sealed.split_first().ok_or_else(fail)?;
        if *format != FORMAT || rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
                .map_err(|_| fail())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| fail())?;
        Ok(SecretString::from(text.to_string()))
    }
}

/// The 32 key bytes from a key file's content: raw, hex or base64.
fn parse_key(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, &'static str> {
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        key.copy_from_slice(bytes);
        return Ok(key);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not 32 raw bytes, hex or base64")?.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode_to_slice(text, key.as_mut()).map_err(|_| "bad hex")?;
        return Ok(key);
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "not 32 raw bytes, 64 hex characters or base64")?,
    );
    if decoded.len() != 32 {
        return Err("the key must be 32 bytes (raw, 64 hex characters, or base64 of 32 bytes)");
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// Writes a new random key, as 64 hex characters, to a file that must not
/// exist yet (mode 0600).
pub fn write_new_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.try_fill_bytes(key.as_mut()).map_err(std::io::Error::other)?;
    let text = Zeroizing::new(hex::encode(key.as_ref()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    writeln!(file, "{}", text.as_str())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn key_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn seals_and_opens_bound_to_the_context() {
        let sealer = Sealer::from_key(&[7u8; 32]);
        let secret = SecretString::from("hunter2-but-longer-than-that");
        let sealed = sealer.seal("billing\x001\x00billing_a", &secret);
        assert!(!sealed.windows(6).any(|w| w == b"hunter"), "plaintext in the sealed value");
        let opened = sealer.open("billing\x001\x00billing_a", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), secret.expose_secret());
        // Another version, another key, a flipped bit: refused.
        assert!(sealer.open("billing\x002\x00billing_a", &sealed).is_err());
        assert!(Sealer::from_key(&[8u8; 32]).open("billing\x001\x00billing_a", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(sealer.open("billing\x001\x00billing_a", &altered).is_err());
        // Two seals of one secret differ (fresh nonce).
        assert_ne!(sealer.seal("c", &secret), sealer.seal("c", &secret));
    }

    #[test]
    fn key_files_raw_hex_and_base64_are_accepted_and_loose_modes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = [0x42u8; 32];
        let hex_text = format!("{}\n", hex::encode(raw));
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let secret = SecretString::from("s3cret-value-for-the-test");
        let sealed = Sealer::from_key(&raw).seal("x", &secret);
        for (name, content) in
            [("raw", raw.to_vec()), ("hex", hex_text.into_bytes()), ("b64", b64.into_bytes())]
        {
            let sealer = Sealer::from_file(&key_file(dir.path(), name, &content, 0o600)).unwrap();
            assert_eq!(sealer.open("x", &sealed).unwrap().expose_secret(), secret.expose_secret(), "{name}");
        }
        let loose = key_file(dir.path(), "loose", &raw, 0o640);
        let e = Sealer::from_file(&loose).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("loose"), "{e}");
        let short = key_file(dir.path(), "short", b"abcd", 0o600);
        let e = Sealer::from_file(&short).unwrap_err().to_string();
        assert!(e.contains("32 bytes") || e.contains("base64"), "{e}");
        assert!(!format!("{:?}", Sealer::from_key(&raw)).contains("42"));
    }

    #[test]
    fn a_new_key_is_private_hex_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        write_new_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
        Sealer::from_file(&path).unwrap();
        assert!(write_new_key(&path).is_err());
    }
}
