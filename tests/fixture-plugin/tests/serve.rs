//! The fixture is started by lessor, never by hand. (This test also makes
//! cargo build the binary next to `lessor`, where lessor's tests find it.)

use std::process::Command;

#[test]
fn without_a_socket_from_lessor_it_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_lessor-fixture-plugin")).env_clear().output().expect("run it");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LESSOR_PLUGIN_SOCKET is not set"), "{stderr}");
}
