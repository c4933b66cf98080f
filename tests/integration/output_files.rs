//! `--output FILE` as a local attacker would meet it: a sticky
//! world-writable folder where uid 65534 planted files and symlinks at the
//! names lessor used to write to, a folder another user can write, and a
//! first write that fails after the lease was taken.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");
/// The caller: a uid of its own, granted the test's role by a policy.
const CALLER: u32 = 65533;
/// The attacker.
const ATTACKER: u32 = 65534;
const PLANTED: &[u8] = b"planted by 65534\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon with one role that uid [`CALLER`] may issue, its socket open
/// to every local user.
async fn daemon_for_caller(db: &TestDb, base: &str) -> (Daemon, String, String) {
    let (role, prefix) = unique_role(base);
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("caller", &format!("uid = {CALLER}"), &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(db, &body).await;
    daemon.open_to_all_users();
    (daemon, role, prefix)
}

/// A folder with `mode`, owned by root, that every user can reach.
fn folder(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// Makes `path` the attacker's, as if uid 65534 had created it.
fn owned_by_attacker(path: &Path) {
    std::os::unix::fs::lchown(path, Some(ATTACKER), Some(ATTACKER)).unwrap();
}

/// A file of the attacker's with mode 0666 and [`PLANTED`] in it.
fn plant_file(path: &Path) {
    std::fs::write(path, PLANTED).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    owned_by_attacker(path);
}

/// A symlink of the attacker's at `path` to `target`.
fn plant_symlink(target: &Path, path: &Path) {
    std::os::unix::fs::symlink(target, path).unwrap();
    owned_by_attacker(path);
}

/// What the attacker planted in `dir` for the final name `name`: files
/// and symlinks at the temp names lessor used to pick (`.NAME.PID.tmp`
/// for the pids the next processes will get) and other likely ones. The
/// symlinks point to `bait`, a file the attacker owns and could read.
fn plant_temp_names(dir: &Path, name: &str, bait: &Path) -> Vec<PathBuf> {
    let next_pid = std::process::id();
    let mut planted = Vec::new();
    for (i, pid) in (next_pid..next_pid + 3000).enumerate() {
        let path = dir.join(format!(".{name}.{pid}.tmp"));
        if i % 2 == 0 {
            plant_file(&path);
        } else {
            plant_symlink(bait, &path);
        }
        planted.push(path);
    }
    for other in [format!(".{name}.tmp"), format!("{name}.tmp"), format!(".{name}.swp"), format!("{name}~")] {
        let path = dir.join(other);
        plant_file(&path);
        planted.push(path);
    }
    planted
}

/// Every planted entry is as the attacker left it: still theirs, files
/// holding only [`PLANTED`], symlinks still symlinks to `bait`, and `bait`
/// untouched.
fn assert_untouched(planted: &[PathBuf], bait: &Path) {
    for path in planted {
        let meta = std::fs::symlink_metadata(path).unwrap();
        assert_eq!(meta.uid(), ATTACKER, "{}", path.display());
        if meta.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(path).unwrap(), bait, "{}", path.display());
        } else {
            assert_eq!(std::fs::read(path).unwrap(), PLANTED, "{} received bytes", path.display());
            assert_eq!(meta.mode() & 0o7777, 0o666);
        }
    }
    assert_eq!(std::fs::read(bait).unwrap(), PLANTED, "the bait received bytes");
}

/// The entries of `dir`, by name.
fn names(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// `FILE` holds a working credential of `prefix`, is a regular file of
/// `owner` with mode 0600.
async fn assert_private_credential(db: &TestDb, file: &Path, owner: u32, prefix: &str) {
    let meta = std::fs::symlink_metadata(file).unwrap();
    assert!(meta.file_type().is_file(), "{} is not a regular file", file.display());
    assert_eq!(meta.uid(), owner, "{}", file.display());
    assert_eq!(meta.mode() & 0o7777, 0o600, "{}", file.display());
    let text = std::fs::read_to_string(file).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}=")))
            .unwrap_or_else(|| panic!("no {key} in the file"))
            .trim_matches('\'')
            .to_string()
    };
    let (user, password) = (value("PGUSER"), value("PGPASSWORD"));
    assert!(user.starts_with(prefix), "{user}");
    db.login(&user, &password).await.expect("the written credential logs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_temp_names_and_a_symlink_in_a_sticky_folder_get_no_byte() {
    let db = TestDb::create().await;
    let (daemon, role, prefix) = daemon_for_caller(&db, "outsticky").await;
    let shared = folder(0o1777);
    let bait = shared.path().join("bait");
    plant_file(&bait);
    let mut planted = plant_temp_names(shared.path(), "creds.env", &bait);
    planted.extend(plant_temp_names(shared.path(), "linked.env", &bait));
    let linked = shared.path().join("linked.env");
    plant_symlink(&bait, &linked);
    planted.push(linked.clone());
    let before = names(shared.path());

    // Another uid: its own 0600 file holding the credential, beside the
    // planted names, none of which received a byte.
    let file = shared.path().join("creds.env");
    let out = daemon
        .as_user(CALLER, CALLER, LESSOR)
        .args(["creds", &role, "--format", "env", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_private_credential(&db, &file, CALLER, &prefix).await;
    assert_untouched(&planted, &bait);
    let mut expected = before.clone();
    expected.insert("creds.env".into());
    assert_eq!(names(shared.path()), expected, "a temp file was left behind");

    // The attacker's symlink at the final name: that uid cannot replace it
    // in a sticky folder, so nothing is issued nor written.
    let out = daemon
        .as_user(CALLER, CALLER, LESSOR)
        .args(["creds", &role, "--format", "env", "--output"])
        .arg(&linked)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains(&linked.display().to_string()), "{message}");
    assert!(message.contains(&format!("a symlink of uid {ATTACKER} in a sticky folder")), "{message}");
    assert_untouched(&planted, &bait);
    assert_eq!(names(shared.path()), expected);
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "a refused output still issued a credential");

    // Root can replace the symlink: rename puts a root-owned 0600 file in
    // its place, and the bait still holds only what the attacker wrote.
    let out = Command::new(LESSOR)
        .args(["creds", &role, "--format", "env", "--output"])
        .arg(&linked)
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_private_credential(&db, &linked, 0, &prefix).await;
    planted.retain(|p| p != &linked);
    assert_untouched(&planted, &bait);
    assert_eq!(names(shared.path()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_another_user_can_write_is_refused_before_anything_is_issued() {
    let db = TestDb::create().await;
    let (daemon, role, prefix) = daemon_for_caller(&db, "outopen").await;
    let open = folder(0o777);
    let theirs = folder(0o700);
    owned_by_attacker(theirs.path());

    for (dir, reason) in [
        (open.path(), "mode 0777 lets anyone write it and it is not sticky".to_string()),
        (theirs.path(), format!("it belongs to uid {ATTACKER}")),
    ] {
        let file = dir.join("creds.env");
        let runs: [&[&str]; 3] = [
            &["creds", &role, "--format", "env", "--output"],
            &["creds", &role, "--watch", "--output"],
            &["exec", "--role", &role, "--output"],
        ];
        for args in runs {
            let mut command = Command::new(LESSOR);
            command.args(args).arg(&file).env("LESSOR_SOCKET", &daemon.socket);
            if args[0] == "exec" {
                command.args(["--", "true"]);
            }
            let out = command.output().unwrap();
            let message = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {message}");
            let expected = format!("refusing to write into {}: {reason}", dir.display());
            assert!(message.contains(&expected), "{args:?}: no {expected:?} in {message}");
            assert!(names(dir).is_empty(), "{args:?}: something was written: {:?}", names(dir));
        }
    }
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a refused output issued a credential");
    assert!(daemon.leases().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_write_that_fails_revokes_the_lease_it_took() {
    let db = TestDb::create().await;
    let (daemon, role, prefix) = daemon_for_caller(&db, "outfail").await;
    // Root's and not writable by the caller: a safe folder, so the lease is
    // issued, but creating the file fails.
    let closed = folder(0o755);
    let file = closed.path().join("creds.env");

    let runs: [&[&str]; 2] =
        [&["exec", "--role", &role, "--output"], &["creds", &role, "--format", "env", "--watch", "--output"]];
    for args in runs {
        let mut command = daemon.as_user(CALLER, CALLER, LESSOR);
        command.args(args).arg(&file);
        if args[0] == "exec" {
            command.args(["--", "touch", "/proc/never-run"]);
        }
        let out = command.output().unwrap();
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {message}");
        assert!(message.contains(&format!("cannot write {}", file.display())), "{args:?}: {message}");
        let lease = message
            .split_whitespace()
            .skip_while(|w| *w != "lease")
            .nth(1)
            .unwrap_or_else(|| panic!("{args:?}: no lease named in {message}"))
            .to_string();
        assert!(message.contains(&format!("lease {lease} revoked")), "{args:?}: {message}");
        let shown = daemon.client().lease_get(&lease).await.unwrap();
        assert_eq!(shown.body["state"], "revoked", "{args:?}: {:?}", shown.body);
        let username = shown.body["username"].as_str().unwrap().to_string();
        assert!(username.starts_with(&prefix), "{username}");
        assert!(!db.role_exists(&username).await, "{args:?}: {username} outlived its revoked lease");
        assert!(names(closed.path()).is_empty());
    }
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
}
