//! Fuzz target: see `fuzz/checks/duration.rs` for what it checks.
#![no_main]

#[path = "../checks/duration.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
