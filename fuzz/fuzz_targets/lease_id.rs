//! Fuzz target: see `fuzz/checks/lease_id.rs` for what it checks.
#![no_main]

#[path = "../checks/lease_id.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
