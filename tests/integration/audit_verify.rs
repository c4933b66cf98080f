//! `lessor audit verify` on logs the library wrote: the exit code, and the
//! file and line it names when the chain breaks. Offline: no daemon.

use std::path::Path;
use std::process::{Command, Output};

use lessor::audit::{Actor, Audit, Record};

fn verify(files: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["audit", "verify"])
        .args(files)
        .output()
        .expect("run lessor")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn write_records(audit: &Audit, from: usize, to: usize) {
    let actor = Actor { uid: Some(1000), pid: Some(7), ..Actor::default() };
    for i in from..to {
        let record = Record::new("creds.issue", actor.clone())
            .target("app_ro")
            .status(200)
            .lease(format!("app_ro/{i}"));
        audit.record(record).await.unwrap();
    }
}

#[tokio::test]
async fn verify_names_the_line_of_a_one_byte_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = Audit::open(&path).unwrap();
    write_records(&audit, 0, 20).await;
    drop(audit);

    let out = verify(&[&path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last = std::fs::read_to_string(&path).unwrap().lines().last().unwrap().to_string();
    let head =
        serde_json::from_str::<serde_json::Value>(&last).unwrap()["hash"].as_str().unwrap().to_string();
    assert!(
        stdout.starts_with(&format!("{}: ok: 21 records, seq 1..21, head {head}\n", path.display())),
        "{stdout}"
    );

    // One byte of line 8 (seq 8, lease app_ro/6) changed.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = text(&bytes).find("app_ro/6\"").unwrap() + "app_ro/".len();
    bytes[at] = b'9';
    std::fs::write(&path, &bytes).unwrap();
    let out = verify(&[&path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:8: chain broken at seq 8: hash mismatch", path.display())),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let out = verify(&[&dir.path().join("missing.jsonl")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing.jsonl: cannot open"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn rotated_files_verify_as_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let audit = Audit::open(&path).unwrap();
    write_records(&audit, 0, 3).await;
    std::fs::rename(&path, &rotated).unwrap();
    audit.reopen();
    write_records(&audit, 3, 5).await;
    drop(audit);

    let out = verify(&[&rotated, &path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("audit.jsonl.1: ok: 4 records, seq 1..4"), "{stdout}");
    assert!(
        stdout.contains("audit.jsonl: ok: 3 records, seq 5..7") && stdout.contains("continues from"),
        "{stdout}"
    );

    // Out of order, the link is broken at the second file's first line.
    let out = verify(&[&path, &rotated]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:1: chain broken at seq 8: does not continue", rotated.display())),
        "{stderr}"
    );
}
