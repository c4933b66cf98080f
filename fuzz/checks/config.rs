//! `lessor config check` on arbitrary text: TOML parsing plus every
//! validation step (plugins' connection and role options included). It may
//! refuse anything, but must never panic, and what it accepts must hold the
//! invariants the broker relies on.
//!
//! Shared by the fuzz target of the same name and by the corpus replay
//! test (`tests/fuzz_corpora.rs`), which runs every input of
//! `fuzz/corpus/config` in CI.

use std::sync::Once;

/// The seeds name this variable in `password_env`, and these files in
/// `password_file` and `seal_key_file`, so connections that need an admin
/// password get one and their roles and static accounts are validated too.
const PASSWORD_ENV: &str = "LESSOR_FUZZ_PASSWORD";
const PASSWORD_FILE: &str = "/tmp/lessor-fuzz-password";
const SEAL_KEY_FILE: &str = "/tmp/lessor-fuzz-seal.key";

static INIT: Once = Once::new();

fn init() {
    use std::os::unix::fs::PermissionsExt;
    std::env::set_var(PASSWORD_ENV, "fuzz-admin-password");
    for (path, text) in [(PASSWORD_FILE, "fuzz-admin-password\n"), (SEAL_KEY_FILE, &"ab".repeat(32))] {
        std::fs::write(path, text).expect("a fixture file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("mode 0600");
    }
}

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    INIT.call_once(init);
    let Ok(text) = std::str::from_utf8(data) else { return };
    match lessor::daemon::load_str(text, "fuzz.toml") {
        Ok(setup) => {
            let config = &setup.config;
            assert!(config.server.max_body_bytes > 0);
            assert!(config.socket_mode <= 0o777);
            for role in setup.roles.values() {
                assert!(!role.default_ttl.as_std().is_zero(), "{}: zero default_ttl accepted", role.name);
                assert!(role.default_ttl <= role.max_ttl, "{}: default_ttl > max_ttl accepted", role.name);
                let connection = &setup.connections[&role.connection];
                assert!(connection.revocation_workers >= 1);
                assert!(connection.revocation_workers < connection.max_connections);
                let max = connection.plugin.capabilities().max_username_len;
                let username = role.username.generate(&role.name);
                assert!(username.len() <= max, "{username:?} is longer than {max}");
                assert!(
                    username.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{username:?}"
                );
                assert!((16..=128).contains(&role.password_length));
            }
            // What the rotator computes at start-up for every static account.
            let now = chrono::Utc::now();
            for account in config.static_accounts.values() {
                let next = account.schedule.next_after(None, now);
                if let Some(next) = next {
                    assert!(next > now, "{}: next rotation {next} is not after {now}", account.name);
                    let _ = account.schedule.next_after(Some(next), now);
                }
                let _ = account.schedule.describe();
            }
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error without a message");
            let _ = errors.to_string();
        }
    }
}
