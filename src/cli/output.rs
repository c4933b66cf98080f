//! Writing a credential to `--output FILE` so that no other local user can
//! read it, redirect it or swap it.
//!
//! The folder is judged first: one that a user other than the caller or
//! root can write is refused unless it is sticky (in a sticky folder others
//! can add names but not rename or remove the caller's), and one owned by
//! another user is refused even when sticky, since its owner may remove
//! anything in it. Only the folder itself is judged: its ancestors are
//! trusted, as the path the caller gave.
//!
//! The secret goes into a temp file with a random name, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted file or symlink at that name fails
//! the open and another name is tried), given mode 0600 on the open file
//! before any byte is written, fsync'd, renamed over FILE, and the folder
//! fsync'd. FILE itself is never opened: `rename` replaces whatever has the
//! name (a symlink, a fifo, another user's file) without writing through it.
//! Where the kernel would refuse that (another user's entry in a sticky
//! folder the caller does not own), lessor refuses before writing anything.

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every credential file.
const MODE: u32 = 0o600;
/// The sticky bit of a folder's mode.
const STICKY: u32 = 0o1000;

/// Why a credential file was not written. Nothing is left behind in any
/// case: a temp file already made is removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum OutputError {
    /// The path has no file name (`/`, `..`).
    #[error("{path}: not a file name")]
    NotAFileName { path: PathBuf },
    /// The folder lets someone else replace what lessor writes there.
    #[error("refusing to write into {folder}: {reason}")]
    UnsafeFolder { folder: PathBuf, reason: String },
    /// The final name is another user's entry that cannot be replaced, or
    /// a folder.
    #[error("refusing to write {path}: {reason}")]
    Unreplaceable { path: PathBuf, reason: String },
    /// A system call failed.
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The folder and file name of `path`.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), OutputError> {
    let name = path.file_name().ok_or_else(|| OutputError::NotAFileName { path: path.to_path_buf() })?;
    let folder = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((folder, name))
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Whether a user other than `me` or root can replace entries of a folder
/// with these attributes; the reason if so.
fn folder_risk(mode: u32, owner: u32, me: u32) -> Option<String> {
    let sticky = mode & STICKY != 0;
    if owner != me && owner != 0 {
        return Some(format!("it belongs to uid {owner}, who can replace the file in it"));
    }
    if mode & 0o022 != 0 && !sticky {
        let who = if mode & 0o002 != 0 { "anyone" } else { "its group" };
        return Some(format!(
            "mode {:04o} lets {who} write it and it is not sticky, so others could replace the file; \
             use a folder only you (or root) can write, or a sticky one",
            mode & 0o7777
        ));
    }
    None
}

/// What an existing entry at the final name is, for messages.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_file() {
        "a file"
    } else if t.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// Checks the folder of `path` and the entry at `path`, if any. Made
/// before a credential is issued (so a refused folder costs no lease) and
/// again at every write.
pub(super) fn check_target(path: &Path) -> Result<(), OutputError> {
    let (folder, _) = split(path)?;
    let io = |source| OutputError::Io { path: path.to_path_buf(), source };
    let me = euid();
    let dir = std::fs::metadata(folder).map_err(io)?;
    if !dir.is_dir() {
        return Err(OutputError::UnsafeFolder { folder: folder.into(), reason: "not a folder".into() });
    }
    if let Some(reason) = folder_risk(dir.mode(), dir.uid(), me) {
        return Err(OutputError::UnsafeFolder { folder: folder.into(), reason });
    }
    let existing = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    if existing.is_dir() {
        return Err(OutputError::Unreplaceable { path: path.into(), reason: "it is a folder".into() });
    }
    let sticky = dir.mode() & STICKY != 0;
    if me != 0 && sticky && dir.uid() != me && existing.uid() != me {
        return Err(OutputError::Unreplaceable {
            path: path.into(),
            reason: format!(
                "it is {} of uid {} in a sticky folder, which only its owner can replace; \
                 lessor never writes through it: remove it or choose another name",
                kind(&existing),
                existing.uid()
            ),
        });
    }
    Ok(())
}

/// Writes `contents` to `path` as the module docs say: a reader sees the
/// old file or the new one, never a part, and nobody else can read it.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    check_target(path)?;
    let (folder, name) = split(path)?;
    let io = |source| OutputError::Io { path: path.to_path_buf(), source };
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .rand_bytes(16)
        .make_in(folder, |temp| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(temp)
        })
        .map_err(io)?;
    // The creation mode is masked by the umask and could be narrower; the
    // mode is set on the open file, before any byte of secret, so it is
    // never wider.
    let file = temp.as_file_mut();
    file.set_permissions(Permissions::from_mode(MODE)).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    // On failure the temp file is removed when `e.file` drops.
    temp.persist(path).map_err(|e| io(e.error))?;
    File::open(folder).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_others_can_write_are_refused_unless_sticky_and_ours_or_roots() {
        let me = 1000;
        assert_eq!(folder_risk(0o700, me, me), None);
        assert_eq!(folder_risk(0o755, 0, me), None);
        assert_eq!(folder_risk(0o1777, 0, me), None);
        assert_eq!(folder_risk(0o1770, me, me), None);
        let refused = |mode, owner| folder_risk(mode, owner, me).unwrap();
        assert!(refused(0o777, me).contains("mode 0777 lets anyone write it"));
        assert!(refused(0o775, 0).contains("mode 0775 lets its group write it"));
        assert!(refused(0o700, 1001).contains("belongs to uid 1001"));
        assert!(refused(0o1777, 1001).contains("belongs to uid 1001"));
    }

    #[test]
    fn writes_mode_0600_over_a_symlink_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700)).unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let path = dir.path().join("creds.env");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_private(&path, b"secret").unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "a temp file was left: {names:?}");
    }

    #[test]
    fn an_unsafe_folder_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o777)).unwrap();
        let e = write_private(&dir.path().join("creds.env"), b"secret").unwrap_err();
        assert!(matches!(e, OutputError::UnsafeFolder { .. }), "{e}");
        assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let e = write_private(Path::new("/"), b"secret").unwrap_err();
        assert!(matches!(e, OutputError::NotAFileName { .. }), "{e}");
    }
}
