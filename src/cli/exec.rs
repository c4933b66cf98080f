//! `lessor exec` and `lessor creds --output`: the consumer side for
//! programs that read their credential from the environment or a file.
//!
//! Both hold the credential with a [`Keeper`]: renewed while in use,
//! replaced before its lease runs out, moved after a static account's
//! rotation. `exec` tells the child of a change with a signal (or restarts
//! it), forwards SIGTERM and SIGINT, revokes the lease when the child
//! exits and exits with the child's status. `--output FILE` writes the
//! credential atomically and privately (see [`output`](super::output))
//! and, with `--watch`, again on every change; a first write that fails
//! revokes the lease just taken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use lessor_client::keeper::{Held, Keeper, Options, Source};
use lessor_client::{Client, Credential};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use super::{env_exports, pretty, CredsFormat, Failure};

/// What `exec` does when the credential changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum OnChange {
    /// Send the child `--signal`. A running process's environment cannot
    /// change: the child re-reads the credential from `--output`.
    Signal,
    /// Stop the child (SIGTERM) and start it again with the new values.
    Restart,
}

/// `lessor exec`'s arguments.
#[derive(Debug, Args)]
pub(super) struct ExecArgs {
    /// The role whose credential the command gets.
    #[arg(long, conflicts_with = "static_name", required_unless_present = "static_name")]
    role: Option<String>,
    /// A static account instead of a role.
    #[arg(long = "static", value_name = "NAME")]
    static_name: Option<String>,
    /// Lease TTL, e.g. `15m`; the role's default when omitted.
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,
    /// An extra variable, e.g. `DATABASE_URL=postgres://{{username}}:{{password}}@db/app`
    /// (`{{username}}`, `{{password}}`, `{{access_key_id}}`,
    /// `{{secret_access_key}}`, `{{session_token}}`, `{{lease_id}}`); a
    /// default variable of the same name is replaced.
    #[arg(long = "env", value_name = "NAME=TEMPLATE")]
    env: Vec<String>,
    /// Leave out the default variables (PGUSER/PGPASSWORD, MYSQL_USER/MYSQL_PWD, AWS_*).
    #[arg(long)]
    no_default_env: bool,
    /// What to do when the credential changes.
    #[arg(long, value_enum, default_value_t = OnChange::Signal)]
    on_change: OnChange,
    /// The signal for `--on-change signal`: HUP, USR1, USR2, TERM, INT, QUIT.
    #[arg(long, default_value = "HUP")]
    signal: String,
    /// How long a replaced lease keeps working before it is revoked
    /// (capped at a third of its TTL).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    drain: String,
    /// Also write the credential to this file (mode 0600), again on every change.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn signal_number(name: &str) -> Result<i32, Failure> {
    Ok(match name.trim_start_matches("SIG").to_ascii_uppercase().as_str() {
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        other => {
            return Err(Failure::new(format!(
                "--signal: unknown signal {other:?} (HUP, USR1, USR2, TERM, INT, QUIT)"
            )))
        }
    })
}

fn drain(text: &str) -> Result<Duration, Failure> {
    text.parse::<crate::config::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| Failure::new(format!("--drain: {e}")))
}

/// The variables a credential gives a child: the backend tools' own
/// (unless `no_default`), then the `--env` templates.
fn credential_env(held: &Held, templates: &[(String, String)], no_default: bool) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut put = |name: &str, value: &str| {
        vars.insert(name.to_string(), value.to_string());
    };
    let lease = held.lease_id.as_deref().unwrap_or("");
    if !no_default {
        if !lease.is_empty() {
            put("LESSOR_LEASE_ID", lease);
        }
        match &held.credential {
            Credential::Database { username, password } => {
                for (user_var, password_var) in lessor_client::env::database_vars(held.plugin.as_deref()) {
                    put(user_var, username);
                    put(password_var, password.expose_secret());
                }
            }
            Credential::Directory { username, distinguished_name, password } => {
                put("LDAPBINDDN", distinguished_name);
                put("LDAP_USERNAME", username);
                put("LDAP_PASSWORD", password.expose_secret());
            }
            Credential::Aws { access_key_id, secret_access_key, session_token, .. } => {
                put("AWS_ACCESS_KEY_ID", access_key_id);
                put("AWS_SECRET_ACCESS_KEY", secret_access_key.expose_secret());
                if let Some(token) = session_token {
                    put("AWS_SESSION_TOKEN", token.expose_secret());
                }
            }
        }
    }
    for (name, template) in templates {
        let value = render(template, held);
        vars.insert(name.clone(), value);
    }
    vars
}

/// Fills a template's `{{…}}` placeholders from the credential.
fn render(template: &str, held: &Held) -> String {
    let (username, password, key, secret, token) = match &held.credential {
        Credential::Database { username, password } | Credential::Directory { username, password, .. } => {
            (username.as_str(), password.expose_secret(), "", "", "")
        }
        Credential::Aws { access_key_id, secret_access_key, session_token, .. } => (
            "",
            "",
            access_key_id.as_str(),
            secret_access_key.expose_secret(),
            session_token.as_ref().map_or("", |t| t.expose_secret()),
        ),
    };
    template
        .replace("{{username}}", username)
        .replace("{{password}}", password)
        .replace("{{access_key_id}}", key)
        .replace("{{secret_access_key}}", secret)
        .replace("{{session_token}}", token)
        .replace(
            "{{distinguished_name}}",
            match &held.credential {
                Credential::Directory { distinguished_name, .. } => distinguished_name,
                _ => "",
            },
        )
        .replace("{{lease_id}}", held.lease_id.as_deref().unwrap_or(""))
}

fn parse_templates(env: &[String]) -> Result<Vec<(String, String)>, Failure> {
    env.iter()
        .map(|pair| {
            let (name, template) = pair
                .split_once('=')
                .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .ok_or_else(|| Failure::new(format!("--env {pair:?}: expected NAME=TEMPLATE")))?;
            Ok((name.to_string(), template.to_string()))
        })
        .collect()
}

async fn start_keeper(
    client: &Client,
    role: Option<String>,
    static_name: Option<String>,
    ttl: Option<String>,
    drain: Duration,
) -> Result<Keeper, Failure> {
    let source = match (role, static_name) {
        (Some(role), _) => Source::Role { role, ttl },
        (None, Some(name)) => Source::Static { name },
        (None, None) => return Err(Failure::new("give --role or --static")),
    };
    let options = Options { drain, ..Options::default() };
    Keeper::start(client.clone(), source, options).await.map_err(|e| Failure::new(e.to_string()))
}

/// `lessor exec`: returns the child's exit status.
pub(super) async fn exec(client: &Client, args: ExecArgs) -> Result<ExitCode, Failure> {
    let templates = parse_templates(&args.env)?;
    let signal_to_send = signal_number(&args.signal)?;
    let drain = drain(&args.drain)?;
    if let Some(path) = &args.output {
        super::output::check_target(path).map_err(|e| Failure::new(e.to_string()))?;
    }
    let keeper = start_keeper(client, args.role, args.static_name, args.ttl, drain).await?;
    let mut changes = keeper.subscribe();
    let mut held = changes.borrow_and_update().clone();
    if let Some(path) = &args.output {
        if let Err(e) = write_credential(path, &held, CredsFormat::Env) {
            return Err(give_up(keeper, &held, e).await);
        }
    }
    let spawn = |held: &Arc<Held>| {
        let mut command = tokio::process::Command::new(&args.command[0]);
        command.args(&args.command[1..]).envs(credential_env(held, &templates, args.no_default_env));
        command.spawn().map_err(|e| Failure::new(format!("cannot run {:?}: {e}", args.command[0])))
    };
    let mut child = match spawn(&held) {
        Ok(child) => child,
        Err(e) => {
            keeper.shutdown().await;
            return Err(e);
        }
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Failure::new(e.to_string()))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Failure::new(e.to_string()))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = terminate.recv() => forward(&child, libc::SIGTERM),
            _ = interrupt.recv() => forward(&child, libc::SIGINT),
            changed = changes.changed() => {
                if changed.is_err() {
                    continue;
                }
                held = changes.borrow_and_update().clone();
                if let Some(path) = &args.output {
                    if let Err(e) = write_credential(path, &held, CredsFormat::Env) {
                        eprintln!("lessor: {e}");
                    }
                }
                match args.on_change {
                    OnChange::Signal => forward(&child, signal_to_send),
                    OnChange::Restart => {
                        forward(&child, libc::SIGTERM);
                        let _ = child.wait().await;
                        child = match spawn(&held) {
                            Ok(child) => child,
                            Err(e) => {
                                keeper.shutdown().await;
                                return Err(e);
                            }
                        };
                    }
                }
            }
        }
    };
    keeper.shutdown().await;
    let status = status.map_err(|e| Failure::new(format!("waiting for the command: {e}")))?;
    Ok(ExitCode::from(exit_code(status)))
}

fn forward(child: &tokio::process::Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child by its pid, which is not reaped yet.
        unsafe { libc::kill(pid as i32, signal) };
    }
}

/// The child's status as a shell reports it: its code, or 128 + signal.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}

/// `lessor creds ROLE --output FILE [--watch]`.
pub(super) async fn creds_to_file(
    client: &Client,
    role: String,
    ttl: Option<String>,
    format: CredsFormat,
    output: &Path,
    watch: bool,
) -> Result<(), Failure> {
    super::output::check_target(output).map_err(|e| Failure::new(e.to_string()))?;
    if !watch {
        let issued = client.issue(&role, ttl.as_deref()).await.map_err(|e| Failure::new(e.to_string()))?;
        let held = Held {
            credential: issued.credential.clone(),
            lease_id: Some(issued.lease_id.clone()),
            plugin: Some(issued.plugin.clone()),
            generation: 1,
            expires_at: Some(issued.expires_at),
        };
        if let Err(e) = write_credential(output, &held, format) {
            let _ = client.revoke_lease(&issued.lease_id).await;
            return Err(Failure::new(format!("{e}; lease {} revoked", issued.lease_id)));
        }
        return Ok(());
    }
    let keeper = start_keeper(client, Some(role), None, ttl, Options::default().drain).await?;
    let mut changes = keeper.subscribe();
    let first = changes.borrow_and_update().clone();
    if let Err(e) = write_credential(output, &first, format) {
        return Err(give_up(keeper, &first, e).await);
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| Failure::new(e.to_string()))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| Failure::new(e.to_string()))?;
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        let held = changes.borrow_and_update().clone();
        if let Err(e) = write_credential(output, &held, format) {
            eprintln!("lessor: {e}");
        }
    }
    keeper.shutdown().await;
    Ok(())
}

/// A first write failed: nobody will read the credential, so the keeper
/// stops and revokes its lease (a static account is left as it is).
async fn give_up(keeper: Keeper, held: &Held, error: String) -> Failure {
    keeper.shutdown().await;
    match &held.lease_id {
        Some(lease) => Failure::new(format!("{error}; lease {lease} revoked")),
        None => Failure::new(error),
    }
}

/// The credential as `format` writes it.
fn credential_text(held: &Held, format: CredsFormat) -> Result<String, String> {
    let body = json!({
        "lease_id": held.lease_id,
        "plugin": held.plugin,
        "expires_at": held.expires_at,
        "credential": held.credential,
    });
    match format {
        CredsFormat::Env if held.lease_id.is_some() => env_exports(&body),
        CredsFormat::Env => Ok(credential_env(held, &[], false)
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", super::shell_quote(v)))
            .collect()),
        CredsFormat::Json | CredsFormat::Table => Ok(pretty(&body)),
    }
}

/// Writes the credential to `path` as [`output`](super::output) says.
fn write_credential(path: &Path, held: &Held, format: CredsFormat) -> Result<(), String> {
    let text = zeroize::Zeroizing::new(credential_text(held, format)?);
    super::output::write_private(path, text.as_bytes()).map_err(|e| e.to_string())
}
