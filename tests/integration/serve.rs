//! `lessor serve` itself: the socket file's mode is `server.socket_mode`
//! as the file system shows it, and `serve --dev` starts with its demo
//! role on the local PostgreSQL, opens the socket to every local user
//! (mode 0666, policies open) and says so in its start-up log.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_has_the_configured_mode() {
    let db = TestDb::create().await;
    let mut daemon = Daemon::start(&db, "").await;
    assert_eq!(mode_of(&daemon.socket), 0o600, "the harness's socket_mode = \"0600\"");

    daemon.stop();
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(&daemon.config_path, config.replace("socket_mode = \"0600\"", "socket_mode = \"0640\""))
        .unwrap();
    daemon.spawn().await;
    assert_eq!(mode_of(&daemon.socket), 0o640, "socket_mode = \"0640\" after a restart");
}

/// Stops the dev server when the test ends, however it ends.
struct DevServer(Child);

impl Drop for DevServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_issues_to_any_local_user_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Others must reach the socket below it, as in a project folder.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log_path = dir.path().join("dev.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(LESSOR)
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env_remove("LESSOR_SOCKET")
        .env("LESSOR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start lessor serve --dev");
    let _server = DevServer(child);
    let socket = dir.path().join(".lessor-dev/lessor.sock");
    let client = lessor_client::Client::new(&socket);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the dev server to be ready", Duration::from_secs(60), || async {
        matches!(client.health().await, Ok(r) if r.status == 200).then_some(())
    })
    .await;

    assert_eq!(mode_of(&socket), 0o666, "the dev server's socket is open to every local user");
    let log = read_log();
    assert!(log.contains("dev server: every local user may issue credentials"), "{log}");
    assert!(log.contains("export LESSOR_SOCKET="), "{log}");

    // nobody (uid 65534), no admin and under no policy, gets the demo
    // role's credential: a real role on the local PostgreSQL.
    let creds = as_nobody(&socket, &["creds", "dev_pg", "--format", "json"]);
    assert!(creds.status.success(), "{}\n{}", String::from_utf8_lossy(&creds.stderr), read_log());
    let issued: serde_json::Value = serde_json::from_slice(&creds.stdout).expect("JSON credentials");
    let lease_id = issued["lease_id"].as_str().expect("a lease id").to_string();
    let username = issued["credential"]["username"].as_str().expect("a username").to_string();
    let local = connect("postgres://postgres@127.0.0.1:5432/postgres").await;
    assert!(role_exists(&local, &username).await, "{username} is not a role on 127.0.0.1:5432");

    // Its owner revokes it; the role is gone from the server.
    let revoked = as_nobody(&socket, &["lease", "revoke", &lease_id]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert!(!role_exists(&local, &username).await, "{username} survived its revocation");
}

/// `lessor ARGS` run as nobody (uid and gid 65534) against `socket`.
fn as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(LESSOR)
        .args(args)
        .env("LESSOR_SOCKET", socket)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

async fn role_exists(local: &tokio_postgres::Client, name: &str) -> bool {
    local.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name]).await.unwrap().is_some()
}
