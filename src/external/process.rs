//! One run of an external plugin's executable: its digest checked, the
//! process started in a private socket folder, the handshake read, the
//! socket connected and its peer checked to be that process, its stderr
//! relayed to the log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use lessor_plugin::proto::{self, v1::plugin_client::PluginClient};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, trace, warn};

use crate::config::PluginConfig;

/// A started plugin process and the gRPC client connected to it.
#[derive(Debug)]
pub(super) struct Process {
    pub child: Child,
    pub pid: u32,
    pub client: PluginClient<Channel>,
    /// Held open: the plugin ends when it reaches its end.
    _stdin: ChildStdin,
    /// The private folder its socket is in, removed with it.
    _dir: tempfile::TempDir,
}

/// The SHA-256 of a file, in lowercase hex.
pub(super) fn digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The uid and gid to run the plugin as, when `user` is set.
fn identity(config: &PluginConfig) -> Result<Option<(u32, u32)>, String> {
    let Some(user) = &config.user else { return Ok(None) };
    let (uid, user_gid) = crate::external::users::user(user)?;
    let gid = match &config.group {
        Some(group) => crate::external::users::group(group)?,
        None => user_gid,
    };
    Ok(Some((uid, gid)))
}

/// Starts `name`'s executable and connects to it, within `config.start_timeout`.
/// The error says what went wrong, without secrets.
pub(super) async fn start(name: &str, config: &PluginConfig) -> Result<Process, String> {
    let command = &config.command;
    // Read on the blocking pool: a large executable takes a while to hash,
    // and the host's runtime has one thread, which the running calls need.
    let path = command.clone();
    let actual = tokio::task::spawn_blocking(move || digest(&path))
        .await
        .map_err(|e| format!("cannot hash {}: {e}", command.display()))?
        .map_err(|e| format!("cannot read {}: {e}", command.display()))?;
    if !actual.eq_ignore_ascii_case(&config.sha256) {
        return Err(format!(
            "{} has sha256 {actual}, but plugins.{name}.sha256 pins {}: refusing to run it",
            command.display(),
            config.sha256.to_ascii_lowercase()
        ));
    }
    let identity = identity(config)?;
    let dir = socket_dir(identity).map_err(|e| format!("cannot make a socket folder: {e}"))?;
    let socket = dir.path().join("plugin.sock");
    let mut cmd = Command::new(command);
    cmd.args(&config.args)
        .env_clear()
        .envs(&config.env)
        .env(proto::SOCKET_ENV, &socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at lessor's terminal is for
        // lessor, which then stops the plugin itself.
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = identity {
        // std drops lessor's supplementary groups too (setgroups) before
        // switching.
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", command.display()))?;
    let pid = child.id().ok_or("the process ended at once")?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    tokio::spawn(relay_stderr(
        name.to_string(),
        level_cap(&config.log_level),
        child.stderr.take().expect("piped"),
    ));
    let ready = async {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line).await.map_err(|e| format!("cannot read its stdout: {e}"))?;
        if read == 0 {
            return Err("it closed stdout without printing the handshake".to_string());
        }
        let line = line.trim_end();
        if line != proto::HANDSHAKE {
            let shown: String = line.chars().take(80).collect();
            return Err(format!("it printed {shown:?} instead of the handshake {:?}", proto::HANDSHAKE));
        }
        // The rest of stdout is read and dropped, so a chatty plugin
        // never blocks on a full pipe.
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while matches!(stdout.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        connect(&socket, pid, identity.map(|(uid, _)| uid)).await
    };
    let limit = config.start_timeout.as_std();
    let client = tokio::select! {
        answered = tokio::time::timeout(limit, ready) => match answered {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("no handshake and connection within {}", config.start_timeout)),
        },
        status = child.wait() => {
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(format!("it exited during start-up ({status})"));
        }
    };
    debug!(plugin = name, pid, "plugin process started");
    Ok(Process { child, pid, client, _stdin: stdin, _dir: dir })
}

/// A fresh 0700 folder for the socket, in `$XDG_RUNTIME_DIR` (or the
/// temp dir), owned by the plugin's user when it runs as another one.
fn socket_dir(identity: Option<(u32, u32)>) -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("lessor-plugin-").tempdir_in(base)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = identity {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    }
    Ok(dir)
}

/// Connects to the plugin's socket; every connection (and reconnection)
/// is refused unless `SO_PEERCRED` says the peer is process `pid` (and
/// user `uid`): a process that took the socket's place is not the plugin.
async fn connect(socket: &Path, pid: u32, uid: Option<u32>) -> Result<PluginClient<Channel>, String> {
    let socket = socket.to_path_buf();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&socket).await?;
            let peer = stream.peer_cred()?;
            let denied = |what: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, what);
            if peer.pid() != Some(pid as i32) {
                return Err(denied(format!(
                    "the socket's peer is process {:?}, not the plugin lessor started ({pid})",
                    peer.pid()
                )));
            }
            if uid.is_some_and(|uid| peer.uid() != uid) {
                return Err(denied(format!("the socket's peer runs as uid {}, not {uid:?}", peer.uid())));
            }
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://lessor-plugin")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect to its socket: {}", error_chain(&e)))?;
    Ok(PluginClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES))
}

/// An error with its causes, `a: b: c`.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `log_level` as a number: 0 error … 4 trace.
fn level_cap(level: &str) -> usize {
    crate::config::plugins::LOG_LEVELS.iter().position(|l| *l == level).unwrap_or(2)
}

/// Relays each stderr line to the log under the plugin's name, at the
/// level its first word names (INFO otherwise), dropping those more
/// detailed than `cap`.
async fn relay_stderr(plugin: String, cap: usize, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (level, text) = split_level(&line);
        if level > cap {
            continue;
        }
        match level {
            0 => error!(target: "lessor::plugin", plugin = %plugin, "{text}"),
            1 => warn!(target: "lessor::plugin", plugin = %plugin, "{text}"),
            2 => info!(target: "lessor::plugin", plugin = %plugin, "{text}"),
            3 => debug!(target: "lessor::plugin", plugin = %plugin, "{text}"),
            _ => trace!(target: "lessor::plugin", plugin = %plugin, "{text}"),
        }
    }
}

/// A stderr line's level (0 error … 4 trace) and the rest of it.
fn split_level(line: &str) -> (usize, &str) {
    let trimmed = line.trim_start();
    let (word, rest) = trimmed.split_once(char::is_whitespace).unwrap_or((trimmed, ""));
    let level = match word.trim_end_matches(':').to_ascii_uppercase().as_str() {
        "ERROR" => 0,
        "WARN" | "WARNING" => 1,
        "INFO" => 2,
        "DEBUG" => 3,
        "TRACE" => 4,
        _ => return (2, line),
    };
    (level, rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::split_level;

    #[test]
    fn a_line_says_its_level_with_its_first_word() {
        assert_eq!(split_level("DEBUG the detail"), (3, "the detail"));
        assert_eq!(split_level("  WARN: careful"), (1, "careful"));
        assert_eq!(split_level("error  broke"), (0, "broke"));
        assert_eq!(split_level("no level here"), (2, "no level here"));
        assert_eq!(split_level("TRACE"), (4, ""));
    }
}
