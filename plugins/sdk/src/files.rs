//! Checks on the files lessor reads secrets or trust from (CA bundles,
//! client keys, the seal key, password files), made at config load so
//! `lessor config check` reports them, never at the first connection
//! attempt. Messages do not repeat the path: the caller names it with the
//! key it came from.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Opens a regular file for reading. Looked at before it is opened, so a
/// fifo does not block the load, and again once open.
fn open_regular(path: &Path) -> Result<File, String> {
    if !std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?.is_file() {
        return Err("not a regular file".into());
    }
    let file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok(file)
}

/// Neither group nor others may read the open file. Judged on the handle
/// that is then read, so the file cannot be swapped in between.
fn check_mode(file: &File) -> Result<(), String> {
    let mode = file.metadata().map_err(|e| format!("cannot read: {e}"))?.mode();
    if mode & 0o077 != 0 {
        return Err(format!("mode {:04o} lets group or others read it; chmod 600 it", mode & 0o7777));
    }
    Ok(())
}

/// The file exists, is a regular file and can be read by this process.
pub fn check_readable(path: &Path) -> Result<(), String> {
    open_regular(path).map(drop)
}

/// As [`check_readable`], and neither group nor others may read it: it
/// holds a private key or a password.
pub fn check_private(path: &Path) -> Result<(), String> {
    check_mode(&open_regular(path)?)
}

/// Reads a password file: private (as [`check_private`]), its trailing
/// line break dropped, not empty.
pub fn read_secret(path: &Path) -> Result<SecretString, String> {
    let mut file = open_regular(path)?;
    check_mode(&file)?;
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| format!("cannot read: {e}"))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err("is empty".into());
    }
    Ok(SecretString::from(secret.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn a_secret_file_group_or_others_can_read_is_refused_with_its_mode() {
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let file = file_with(mode, "pw\n");
            let e = read_secret(file.path()).unwrap_err();
            assert!(e.contains(&format!("mode {mode:04o}")) && e.contains("chmod 600"), "{e}");
            assert!(!e.contains("pw\n"), "{e}");
            assert_eq!(check_private(file.path()).unwrap_err(), e);
        }
    }

    #[test]
    fn a_private_secret_file_is_read_without_its_line_break() {
        for mode in [0o600, 0o400] {
            let file = file_with(mode, "s3cret\r\n");
            assert_eq!(read_secret(file.path()).unwrap().expose_secret(), "s3cret");
        }
        assert_eq!(read_secret(file_with(0o600, "\n").path()).unwrap_err(), "is empty");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_secret(dir.path()).unwrap_err(), "not a regular file");
        assert!(read_secret(&dir.path().join("missing")).unwrap_err().starts_with("cannot read"));
    }
}
