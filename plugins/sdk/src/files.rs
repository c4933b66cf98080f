//! Checks on the files lessor reads secrets or trust from (CA bundles,
//! client keys, the seal key), made at config load so `lessor config check`
//! reports them, never at the first connection attempt. Messages do not
//! repeat the path: the caller names it with the key it came from.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The file exists, is a regular file and can be read by this process.
pub fn check_readable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    Ok(())
}

/// As [`check_readable`], and neither group nor others may read it: it
/// holds a private key.
pub fn check_private(path: &Path) -> Result<(), String> {
    check_readable(path)?;
    let mode = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?.mode();
    if mode & 0o077 != 0 {
        return Err(format!("mode {:04o} lets group or others read it; chmod 600 it", mode & 0o7777));
    }
    Ok(())
}
