//! Fuzz target: see `fuzz/checks/api_body.rs` for what it checks.
#![no_main]

#[path = "../checks/api_body.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
