use super::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn someone() -> Actor {
    Actor { uid: Some(1000), user: Some("app".into()), pid: Some(42), ..Actor::default() }
}

fn issue(n: usize) -> Record {
    Record::new("creds.issue", someone()).target("app_ro").status(200).lease(format!("app_ro/{n}"))
}

fn read_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn raw_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(String::from).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// A closed log of `n` records after its `audit.opened`, and its path.
async fn log_of(dir: &tempfile::TempDir, n: usize) -> PathBuf {
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(&path).unwrap();
    for i in 0..n {
        audit.record(issue(i)).await.unwrap();
    }
    path
}

#[test]
fn a_line_is_its_fields_then_the_hash_of_the_rest() {
    let record = issue(1).failed("backend_failed", "connection refused");
    let line = line::encode(1, "2030-01-01T00:00:00.000Z", GENESIS, &record);
    let text = std::str::from_utf8(&line.bytes).unwrap();
    assert!(text.starts_with(&format!("{{\"seq\":1,\"time\":\"2030-01-01T00:00:00.000Z\",\"prev\":\"{GENESIS}\",\"action\":\"creds.issue\"")), "{text}");
    assert!(text.ends_with(&format!(",\"hash\":\"{}\"}}\n", line.hash)), "{text}");
    assert_eq!(text.matches('\n').count(), 1);
    // The definition a third party checks: drop `,"hash":"…"}`, put `}` back, SHA-256.
    let body = &text[..text.len() - 1 - HASH_SUFFIX_LEN];
    assert_eq!(hex::encode(Sha256::digest(format!("{body}}}"))), line.hash);
    let value: Value = serde_json::from_str(text).unwrap();
    assert_eq!(value["outcome"], "failed");
    assert_eq!(value["error_code"], "backend_failed");
    assert!(value["actor"].get("exe").is_none(), "absent fields are left out: {value}");
    assert_eq!(line::parse(&line.bytes[..line.bytes.len() - 1]).unwrap().hash, line.hash);
}

#[test]
fn long_fields_are_cut_on_a_character_boundary() {
    let record = issue(1).reason("é".repeat(MAX_FIELD)).target("t".repeat(10)).capped();
    let reason = record.reason.unwrap();
    assert!(reason.len() <= MAX_FIELD && reason.ends_with('…'), "{}", reason.len());
    assert_eq!(record.target.unwrap(), "t".repeat(10));
}

#[tokio::test]
async fn disabled_accepts_everything_and_writes_nothing() {
    let audit = Audit::disabled();
    audit.record(issue(1)).await.unwrap();
    audit.record_background(issue(2));
    audit.reopen();
    assert_eq!(audit.failure(), None);
    assert_eq!(audit.path(), None);
}

#[tokio::test]
async fn the_chain_continues_across_a_restart_and_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 3).await;
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    // A restart: the same file, continued.
    let audit = Audit::open(&path).unwrap();
    audit.record(issue(3)).await.unwrap();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 6, "opened, 3, opened, 1");
    assert_eq!(lines[4]["action"], "audit.opened");
    assert_eq!(lines[4]["prev"], lines[3]["hash"]);
    assert_eq!(lines[4]["reason"], "continues seq 4 of this file");
    let head: Head = serde_json::from_str(&fs::read_to_string(head_path(&path)).unwrap()).unwrap();
    assert_eq!(head, Head { seq: 6, hash: lines[5]["hash"].as_str().unwrap().into() });

    // A rotation: move the file, SIGHUP; the new file starts with the old head.
    let rotated = dir.path().join("audit.jsonl.1");
    fs::rename(&path, &rotated).unwrap();
    audit.record(issue(4)).await.unwrap(); // still into the moved file
    audit.reopen();
    audit.record(issue(5)).await.unwrap();
    assert_eq!(audit.failure(), None);
    drop(audit);

    let old = verify(&rotated).unwrap();
    assert_eq!(
        (old.records, old.first_seq, old.last_seq, old.continues_from.clone()),
        (7, Some(1), Some(7), None)
    );
    let new = read_lines(&path);
    assert_eq!(new[0]["action"], "audit.reopened");
    assert_eq!(new[0]["seq"], 8);
    assert_eq!(new[0]["prev"].as_str(), old.head.as_deref());
    let current = verify(&path).unwrap();
    assert_eq!((current.first_seq, current.last_seq), (Some(8), Some(9)));
    assert_eq!(current.continues_from, old.head);
    assert!(current.notes.iter().any(|n| n.contains("matches")), "{:?}", current.notes);
}

#[tokio::test]
async fn a_restart_right_after_a_rotation_continues_from_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 2).await;
    let old_head = verify(&path).unwrap().head;
    fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
    let audit = Audit::open(&path).unwrap();
    drop(audit);
    let lines = read_lines(&path);
    assert_eq!(lines[0]["seq"], 4);
    assert_eq!(lines[0]["prev"].as_str(), old_head.as_deref());
    assert!(lines[0]["reason"].as_str().unwrap().contains("from"), "{}", lines[0]);
}

#[tokio::test]
async fn a_sighup_without_a_rotation_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 0).await;
    let audit = Audit::open(&path).unwrap();
    audit.reopen();
    audit.record(issue(1)).await.unwrap();
    drop(audit);
    let lines = read_lines(&path);
    assert_eq!(lines[2]["action"], "audit.reopened");
    assert_eq!(verify(&path).unwrap().last_seq, Some(4));
}

#[tokio::test]
async fn another_chain_at_the_path_is_refused_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = log_of(&other_dir, 1).await;
    let path = log_of(&dir, 0).await;
    let audit = Audit::open(&path).unwrap();
    let moved = dir.path().join("moved.jsonl");
    fs::rename(&path, &moved).unwrap();
    fs::copy(&other, &path).unwrap();
    audit.reopen();
    audit.record(issue(1)).await.unwrap(); // into the file opened before
    let failure = audit.failure().expect("a failed reopen shows");
    assert!(failure.contains("another chain"), "{failure}");
    assert_eq!(read_lines(&moved).len(), 3);
    assert_eq!(read_lines(&path).len(), 2, "the other chain is left alone");
    // Moved away, the next SIGHUP works.
    fs::remove_file(&path).unwrap();
    audit.reopen();
    audit.record(issue(2)).await.unwrap();
    assert_eq!(audit.failure(), None);
}

#[tokio::test]
async fn verify_passes_a_good_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 10).await;
    let found = verify(&path).unwrap();
    assert_eq!((found.records, found.first_seq, found.last_seq), (11, Some(1), Some(11)));
    assert_eq!(found.head.as_deref(), read_lines(&path)[10]["hash"].as_str());
    assert_eq!(found.continues_from, None);
}

#[tokio::test]
async fn an_intent_and_its_outcome_are_told_apart_and_chained_like_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(&path).unwrap();
    let intent = Record::new("leases.revoke_prefix", someone()).target("app_ro/").intent("i-1");
    audit.record(intent).await.unwrap();
    let outcome = Record::new("POST /v1/leases/revoke", someone())
        .target("/v1/leases/revoke")
        .status(200)
        .outcome_of("i-1");
    audit.record(outcome).await.unwrap();
    audit.record(issue(1)).await.unwrap();
    drop(audit);
    let lines = read_lines(&path);
    assert_eq!((&lines[1]["phase"], &lines[1]["outcome"]), (&Value::from("intent"), &Value::from("pending")));
    assert_eq!((&lines[2]["phase"], &lines[2]["outcome"]), (&Value::from("outcome"), &Value::from("ok")));
    assert_eq!((&lines[1]["intent_id"], &lines[2]["intent_id"]), (&Value::from("i-1"), &Value::from("i-1")));
    assert!(lines[3].get("phase").is_none() && lines[3].get("intent_id").is_none(), "{}", lines[3]);
    assert_eq!(verify(&path).unwrap().records, 4);
}

/// Breaks a copy of a good log (without its head file) with `edit`; where
/// verify says it breaks.
async fn broken_by(edit: impl FnOnce(&mut Vec<String>)) -> Broken {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 10).await;
    let mut lines = raw_lines(&path);
    edit(&mut lines);
    let copy = dir.path().join("copy.jsonl");
    write_lines(&copy, &lines);
    verify(&copy).unwrap_err()
}

#[tokio::test]
async fn verify_finds_an_edited_byte() {
    let broken = broken_by(|lines| lines[4] = lines[4].replacen("app_ro/3", "app_ro/4", 1)).await;
    assert_eq!((broken.line, broken.seq), (5, Some(5)));
    assert!(broken.what.contains("hash mismatch"), "{}", broken.what);
    let broken = broken_by(|lines| lines[6] = lines[6].replacen("\"seq\":7", "\"seq\":8", 1)).await;
    assert_eq!(broken.line, 7);
    assert!(broken.what.contains("hash mismatch"), "{}", broken.what);
}

#[tokio::test]
async fn verify_finds_a_deleted_line() {
    let broken = broken_by(|lines| drop(lines.remove(4))).await;
    assert_eq!((broken.line, broken.seq), (5, Some(5)));
    assert!(broken.what.contains("seq jumps from 4 to 6"), "{}", broken.what);
    let broken = broken_by(|lines| drop(lines.remove(9))).await;
    assert_eq!((broken.line, broken.seq), (10, Some(10)));
}

#[tokio::test]
async fn a_file_may_continue_an_earlier_one() {
    // The first lines of a file alone cannot be missed: only the file
    // before can tell (`lessor audit verify OLD NEW` checks the link).
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 3).await;
    let mut lines = raw_lines(&path);
    let first: Value = serde_json::from_str(&lines.remove(0)).unwrap();
    let copy = dir.path().join("copy.jsonl");
    write_lines(&copy, &lines);
    let found = verify(&copy).unwrap();
    assert_eq!((found.first_seq, found.continues_from.as_deref()), (Some(2), first["hash"].as_str()));
}

#[tokio::test]
async fn verify_finds_swapped_lines() {
    let broken = broken_by(|lines| lines.swap(3, 4)).await;
    assert_eq!((broken.line, broken.seq), (4, Some(4)));
    assert!(broken.what.contains("jumps"), "{}", broken.what);
}

#[tokio::test]
async fn verify_finds_a_torn_or_foreign_line() {
    let broken = broken_by(|lines| lines[2] = "not json".into()).await;
    assert_eq!(broken.line, 3);
    assert!(broken.what.contains("not a JSON record"), "{}", broken.what);
    let broken = broken_by(|lines| lines.insert(2, String::new())).await;
    assert_eq!(broken.line, 3);
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 3).await;
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 20]).unwrap();
    let broken = verify(&path).unwrap_err();
    assert_eq!((broken.line, broken.seq), (4, Some(4)));
    assert!(broken.what.contains("incomplete last line"), "{}", broken.what);
}

#[tokio::test]
async fn verify_finds_records_cut_from_the_end_against_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 5).await;
    let mut lines = raw_lines(&path);
    lines.truncate(4);
    write_lines(&path, &lines);
    let broken = verify(&path).unwrap_err();
    assert_eq!((broken.line, broken.seq), (5, Some(5)));
    assert!(broken.what.contains("cut from the end"), "{}", broken.what);
    // Nor does the daemon carry on as if nothing happened.
    let refused = Audit::open(&path).unwrap_err();
    assert!(
        matches!(refused, AuditError::Chain { .. }) && refused.to_string().contains("removed"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 2).await;
    let good = fs::read(&path).unwrap();
    let mut torn = good.clone();
    let tail = b"{\"seq\":4,\"time\":\"2030-01-0";
    torn.extend_from_slice(tail);
    fs::write(&path, &torn).unwrap();
    let audit = Audit::open(&path).unwrap();
    audit.record(issue(9)).await.unwrap();
    drop(audit);
    assert!(fs::read(&path).unwrap().starts_with(&good));
    let lines = read_lines(&path);
    assert_eq!(lines[3]["error_code"], "torn_tail");
    assert!(
        lines[3]["reason"].as_str().unwrap().contains(&format!("{} bytes after seq 3", tail.len())),
        "{}",
        lines[3]
    );
    assert_eq!(verify(&path).unwrap().last_seq, Some(5));
}

#[tokio::test]
async fn a_last_line_that_does_not_check_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 2).await;
    let mut lines = raw_lines(&path);
    lines[2] = lines[2].replacen("app_ro", "app_rw", 1);
    write_lines(&path, &lines);
    let refused = Audit::open(&path).unwrap_err();
    assert!(refused.to_string().contains("does not check out"), "{refused}");
}

#[tokio::test]
async fn one_file_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let _first = Audit::open(&path).unwrap();
    let second = Audit::open(&path).unwrap_err();
    assert!(second.to_string().contains("another lessor"), "{second}");
}

#[test]
fn an_unwritable_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/audit.jsonl");
    let e = Audit::open(&missing).unwrap_err();
    assert!(matches!(e, AuditError::Open { .. }), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()) && e.to_string().contains("No such file"),
        "{e}"
    );

    // Root writes into a mode 0500 directory anyway; sysfs refuses even root.
    // SAFETY: geteuid has no preconditions.
    let path = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/sys/lessor-audit-test.jsonl")
    } else {
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        ro.join("audit.jsonl")
    };
    let e = Audit::open(&path).unwrap_err();
    assert!(e.to_string().starts_with(&format!("audit log {}: cannot open: ", path.display())), "{e}");
    assert!(e.to_string().contains("ermission denied"), "{e}");
}

#[tokio::test]
async fn a_failing_disk_fails_records_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = log_of(&dir, 1).await;
    let audit = Audit::open(&path).unwrap();
    let before = verify(&path).unwrap();

    // The path now leads to a full disk: /dev/full answers every write ENOSPC.
    let moved = dir.path().join("audit.jsonl.1");
    fs::rename(&path, &moved).unwrap();
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    audit.reopen();
    let e = audit.record(issue(2)).await.unwrap_err();
    assert!(matches!(e, AuditError::Write { .. }), "{e}");
    assert!(
        e.to_string().contains(&path.display().to_string()) && e.to_string().contains("No space left"),
        "{e}"
    );
    let failure = audit.failure().expect("health shows the failure");
    assert!(failure.contains("No space left"), "{failure}");
    audit.record_background(Record::new("expiry.revoke", Actor::daemon()).lease("app_ro/x"));

    // The operator fixes it: a real file again, and a SIGHUP.
    fs::remove_file(&path).unwrap();
    audit.reopen();
    audit.record(issue(3)).await.unwrap();
    assert_eq!(audit.failure(), None);
    drop(audit);

    // Nothing of the failed request was written; the background record was
    // kept and written once the disk worked, and the chain goes on from the
    // head before the failure.
    let old = verify(&moved).unwrap();
    assert_eq!(old.last_seq, before.last_seq);
    let new = verify(&path).unwrap();
    assert_eq!(new.first_seq, old.last_seq.map(|s| s + 1));
    assert_eq!(new.continues_from, old.head);
    let actions: Vec<String> =
        read_lines(&path).iter().map(|l| l["action"].as_str().unwrap().to_string()).collect();
    assert_eq!(actions, ["audit.reopened", "expiry.revoke", "audit.reopened", "creds.issue"]);
    assert!(!fs::read_to_string(&path).unwrap().contains("app_ro/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(&path).unwrap();
    let groups_before = audit.group_writes();
    let n = 500;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let audit = audit.clone();
            tokio::spawn(async move { audit.record(issue(i)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let groups = audit.group_writes() - groups_before;
    assert!(groups < n as u64 / 2, "{n} records took {groups} fsyncs");
    assert_eq!(audit.records_written(), n as u64 + 1);
    drop(audit);
    assert_eq!(verify(&path).unwrap().records, n as u64 + 1);
}

#[test]
fn errors_name_the_file() {
    let e = AuditError::Write { path: "/var/log/a.jsonl".into(), records: 3, message: "fsync: EIO".into() };
    assert_eq!(e.to_string(), "audit log /var/log/a.jsonl: cannot write 3 record(s): fsync: EIO");
    assert_eq!(e.code(), "audit_unavailable");
}
