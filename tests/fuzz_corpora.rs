//! The fuzz corpora, replayed as ordinary tests: every input fuzzing kept
//! in `fuzz/corpus/<target>` goes through the same check as the fuzz
//! target (`fuzz/checks/<target>.rs`, one file shared by both), so CI
//! guards what fuzzing found without a nightly toolchain or libFuzzer.
//!
//! Each test runs a whole corpus and reports every input that failed, by
//! file name, not only the first.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[path = "../fuzz/checks/api_body.rs"]
mod api_body;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/duration.rs"]
mod duration;
#[path = "../fuzz/checks/lease_id.rs"]
mod lease_id;

/// Runs every input of `fuzz/corpus/<target>` through `check`.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    inputs.sort();
    // A corpus that went missing would make the test pass on nothing.
    assert!(inputs.len() >= 20, "{}: only {} inputs", dir.display(), inputs.len());
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz/corpus/{target} fail its check (each panic is printed above): {}",
        failed.len(),
        inputs.len(),
        failed.join(", ")
    );
}

#[test]
fn duration_corpus() {
    replay("duration", duration::check);
}

#[test]
fn lease_id_corpus() {
    replay("lease_id", lease_id::check);
}

#[test]
fn config_corpus() {
    replay("config", config::check);
}

#[test]
fn api_body_corpus() {
    replay("api_body", api_body::check);
}
