//! `Duration::from_str` (config values, `ttl` and `increment` in requests):
//! never panics, and what it accepts prints as text that parses back to the
//! same value.
//!
//! Shared by the fuzz target of the same name and by the corpus replay
//! test (`tests/fuzz_corpora.rs`), which runs every input of
//! `fuzz/corpus/duration` in CI.

use std::str::FromStr;

use lessor::config::Duration;

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Duration::from_str(text) {
        Ok(duration) => {
            let shown = duration.to_string();
            let again = Duration::from_str(&shown)
                .unwrap_or_else(|e| panic!("{text:?} -> {shown:?} does not parse back: {e}"));
            assert_eq!(again, duration, "{text:?} -> {shown:?} -> {again:?}");
            // The canonical form is a fixed point.
            assert_eq!(again.to_string(), shown);
            // As serde (config and JSON) sees it.
            let json = serde_json::to_string(&duration).expect("serializes");
            let back: Duration = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, duration);
            let _ = duration.to_chrono();
            let _ = duration.as_secs();
        }
        Err(e) => {
            assert!(e.to_string().contains("invalid duration"));
        }
    }
}
