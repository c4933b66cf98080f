//! The `lessor` command line: `serve` runs the daemon, every other command
//! is a thin client of its socket API (DESIGN §5, §6).
//!
//! The CLI owns presentation only: argument parsing, the output formats
//! (`json`, `env`, `table`) and exit codes. It never decides anything the
//! daemon decides, so a script that uses the socket directly sees the same
//! behaviour.
//!
//! Exit codes: 0 success; 1 the daemon refused or something failed (the
//! daemon's message is printed as `lessor: <message> (<code>, HTTP <n>)`);
//! 2 the daemon could not be reached (clap also uses 2 for usage errors).
//! Passwords and keys are printed on stdout as part of `creds` output,
//! which is what that command is for, and never in a message on stderr.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::{Client, ClientError, Response};

mod audit;
mod completions;
mod config_page;
mod exec;
mod format;
mod kit;
mod man;
mod output;
mod plugin;
mod store;

use audit::AuditCommand;
use format::{creds_table, env_exports, lease_table, shell_quote, static_table, tidy_lines};

/// Where the daemon listens unless `--socket` or `LESSOR_SOCKET` says
/// otherwise.
pub const DEFAULT_SOCKET: &str = "/run/lessor/lessor.sock";

/// lessor: short-lived database and cloud credentials over a local socket.
#[derive(Debug, Parser)]
#[command(name = "lessor", version, about, long_about = None)]
struct Cli {
    /// Path of the daemon's Unix socket [default: /run/lessor/lessor.sock].
    // Not a clap default: `serve` must know whether it was set, so that an
    // explicit socket overrides the config file and the default does not.
    #[arg(long, global = true, env = "LESSOR_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The TOML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run with an embedded store in a local folder and demo roles for
        /// whatever local backends are found.
        #[arg(long)]
        dev: bool,
    },
    /// Issue a credential for a role.
    Creds {
        /// The role to issue for.
        role: String,
        /// Lease TTL, e.g. `15m`; the role's default when omitted.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = CredsFormat::Json)]
        format: CredsFormat,
        /// Write the credential to this file (atomically, mode 0600)
        /// instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// With --output: keep the lease renewed, replace it before it
        /// runs out, rewrite the file on every change, and revoke it on
        /// SIGTERM or SIGINT.
        #[arg(long, requires = "output")]
        watch: bool,
    },
    /// Run a command with a credential in its environment, kept renewed
    /// while it runs and revoked when it exits; exits with its status.
    Exec(exec::ExecArgs),
    /// Inspect, renew and revoke leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Show the daemon's readiness and counts.
    Status,
    /// AWS operator actions.
    #[command(subcommand)]
    Aws(AwsCommand),
    /// Drop backend users under a connection's tidy_prefix that no lease
    /// covers (root or the daemon's user only).
    Tidy {
        /// Only this connection; every one with tidy = true when omitted.
        #[arg(long, value_name = "NAME")]
        connection: Option<String>,
        /// Only print what would be dropped.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Check a config file or print its JSON Schema.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Static accounts: their current credential.
    #[command(subcommand)]
    Static(StaticCommand),
    /// Rotate a static account's password now (root or the daemon's user).
    Rotate {
        /// The static account.
        name: String,
        /// Why; recorded in the log. Required with `--overlap 0s`.
        #[arg(long)]
        reason: Option<String>,
        /// How long the previous credential keeps working, e.g. `0s` for a
        /// suspected leak; the account's `overlap` when omitted.
        #[arg(long, value_name = "DURATION")]
        overlap: Option<String>,
    },
    /// Rotate a connection's own admin password (root or the daemon's
    /// user); the new one is stored sealed and nobody can read it.
    RotateRoot {
        /// The connection, as in `[connections.NAME]`.
        connection: String,
    },
    /// Keys that seal static-account secrets in the store.
    #[command(subcommand)]
    Seal(SealCommand),
    /// The lease store, offline: copy a SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Plugins: list them, serve a built-in one out of process, run the
    /// conformance kit against one.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print the daemon's events for you as they happen, one JSON line
    /// each: a snapshot, then rotations, leases expiring and revoked.
    Watch,
    /// The audit log, offline (no daemon needed).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a completion script for a shell, e.g.
    /// `lessor completions bash > /etc/bash_completion.d/lessor`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write every man page (lessor(1), one per subcommand, lessor.toml(5))
    /// into a directory, for packaging.
    #[command(hide = true)]
    Man {
        /// The directory; made when missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StaticCommand {
    /// Show a static account's current credential, version and schedule.
    Get {
        /// The static account.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = CredsFormat::Json)]
        format: CredsFormat,
        /// Keep running and print the account again (one JSON line) after
        /// every rotation.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SealCommand {
    /// Write a new random key (64 hex characters, mode 0600) to a file that
    /// does not exist yet, for `server.seal_key_file`.
    NewKey {
        /// Where to write it.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// List your leases.
    List {
        /// Only leases whose id starts with this, e.g. `app_ro/`.
        #[arg(long)]
        prefix: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show one lease's metadata (never its secret).
    Show {
        /// The lease id, e.g. `app_ro/3kTq…`.
        id: String,
    },
    /// Extend a lease, capped by the role's max_ttl.
    Renew {
        /// The lease id.
        id: String,
        /// How much to extend by, e.g. `1h`; the role's default when omitted.
        #[arg(long, value_name = "DURATION")]
        increment: Option<String>,
    },
    /// Revoke one lease now, or every lease under a prefix.
    Revoke {
        /// The lease id.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        id: Option<String>,
        /// Revoke every lease whose id starts with this, e.g. `app_ro/`.
        #[arg(long)]
        prefix: Option<String>,
        /// With --prefix: forget leases even when the backend refuses to
        /// revoke them.
        // `requires` alone is waived when `id` (which conflicts with
        // `--prefix`) is given, hence the explicit conflict.
        #[arg(long, requires = "prefix", conflicts_with = "id")]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AwsCommand {
    /// Deny every session of an assumed_role role issued before now, by
    /// putting a deny-all policy on its IAM role (for a leaked token, which
    /// AWS would otherwise honour until it expires). Root or the daemon's
    /// user only.
    RevokeSessions {
        /// The lessor role (credential_type = "assumed_role").
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and validate a config file.
    Check {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the config file's JSON Schema.
    Schema,
}

/// How `creds` prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CredsFormat {
    /// The daemon's answer, pretty-printed.
    Json,
    /// Shell `export` lines, for `eval "$(lessor creds ROLE --format env)"`.
    Env,
    /// Aligned `key  value` rows.
    Table,
}

/// How `lease list` prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    /// One row per lease.
    Table,
    /// The daemon's answer, pretty-printed.
    Json,
}

/// A command that did not succeed: what to say on stderr, and the exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 1 }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self { code: if e.is_unreachable() { 2 } else { 1 }, message: e.to_string() }
    }
}

/// Parses the command line, runs the command and returns the exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("lessor: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, Failure> {
    let client = Client::new(cli.socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)));
    match cli.command {
        Command::Serve { config, dev } => {
            let options = crate::daemon::ServeOptions { config, dev, socket: cli.socket };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(crate::daemon::serve(options)).map_err(|e| Failure::new(format!("{e:#}")))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => match check_config(&file) {
            Ok(setup) => {
                out(&format!(
                    "{}: ok ({} connections, {} roles, {} static accounts)\n",
                    file.display(),
                    setup.connections.len(),
                    setup.roles.len(),
                    setup.config.static_accounts.len()
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                // Already one line per problem, each naming the file.
                eprintln!("{errors}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Config(ConfigCommand::Schema) => {
            out(&crate::config::json_schema())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(command) => audit::run(command),
        Command::Completions { shell } => out(&completions::script(shell)).map(|()| ExitCode::SUCCESS),
        Command::Man { out: dir } => {
            let written = man::write_all(&dir)
                .map_err(|e| Failure::new(format!("cannot write the man pages to {}: {e}", dir.display())))?;
            out(&written.iter().map(|path| format!("{}\n", path.display())).collect::<String>())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(command) => plugin::run(command, &client),
        Command::Store(command) => store::run(command),
        Command::Seal(SealCommand::NewKey { file }) => {
            crate::seal::write_new_key(&file)
                .map_err(|e| Failure::new(format!("cannot write {}: {e}", file.display())))?;
            out(&format!("wrote a new seal key to {} (mode 0600)\n", file.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(exec::exec(&client, args))
        }
        command => {
            // One request per process: a current-thread runtime is enough
            // and starts faster.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
            runtime.block_on(client_command(&client, command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn client_command(client: &Client, command: Command) -> Result<(), Failure> {
    match command {
        Command::Creds { role, ttl, format, output: Some(output), watch } => {
            exec::creds_to_file(client, role, ttl, format, &output, watch).await
        }
        Command::Creds { role, ttl, format, output: None, .. } => {
            let body = success(client.creds(&role, ttl.as_deref()).await?)?;
            match format {
                CredsFormat::Json => out(&pretty(&body)),
                CredsFormat::Table => out(&creds_table(&body)),
                CredsFormat::Env => match env_exports(&body) {
                    Ok(text) => out(&text),
                    Err(why) => {
                        // Nobody will ever use this credential: take it back
                        // rather than leave it live until its TTL.
                        let id = body.get("lease_id").and_then(Value::as_str);
                        let revoked = match id {
                            Some(id) => matches!(client.revoke(id).await, Ok(r) if r.is_success()),
                            None => false,
                        };
                        let what = match (id, revoked) {
                            (Some(id), true) => format!("; lease {id} revoked"),
                            (Some(id), false) => format!("; lease {id} left to expire"),
                            (None, _) => String::new(),
                        };
                        Err(Failure::new(format!("{why} (use --format json){what}")))
                    }
                },
            }
        }
        Command::Lease(LeaseCommand::List { prefix, format }) => {
            let body = success(client.lease_list_all(prefix.as_deref()).await?)?;
            match format {
                ListFormat::Json => out(&pretty(&body)),
                ListFormat::Table => out(&lease_table(&body).map_err(Failure::new)?),
            }
        }
        Command::Lease(LeaseCommand::Show { id }) => out(&pretty(&success(client.lease_get(&id).await?)?)),
        Command::Lease(LeaseCommand::Renew { id, increment }) => {
            out(&pretty(&success(client.renew(&id, increment.as_deref()).await?)?))
        }
        Command::Lease(LeaseCommand::Revoke { id: Some(id), .. }) => {
            let body = success(client.revoke(&id).await?)?;
            if body.is_null() {
                out(&format!("revoked {id}\n"))
            } else {
                out(&pretty(&body))
            }
        }
        Command::Lease(LeaseCommand::Revoke { id: None, prefix, force }) => {
            let prefix = prefix.expect("clap requires an id or --prefix");
            let body = success(client.revoke_prefix(&prefix, force).await?)?;
            out(&pretty(&body))?;
            match body.get("failed").and_then(Value::as_array).map(Vec::len) {
                Some(n) if n > 0 => Err(Failure::new(format!(
                    "{n} lease(s) under `{prefix}` could not be revoked (listed under `failed`)"
                ))),
                _ => Ok(()),
            }
        }
        Command::Tidy { connection, dry_run, format } => {
            let body = success(client.tidy(connection.as_deref(), dry_run).await?)?;
            match format {
                ListFormat::Json => out(&pretty(&body))?,
                ListFormat::Table => out(&tidy_lines(&body).map_err(Failure::new)?)?,
            }
            let errors: usize = body["connections"]
                .as_array()
                .map(|c| c.iter().map(|r| r["errors"].as_array().map_or(0, Vec::len)).sum())
                .unwrap_or(0);
            match errors {
                0 => Ok(()),
                n => Err(Failure::new(format!("tidy: {n} error(s), listed above"))),
            }
        }
        Command::Aws(AwsCommand::RevokeSessions { role }) => {
            out(&pretty(&success(client.revoke_sessions(&role).await?)?))
        }
        Command::Status => {
            let response = client.health().await?;
            if response.is_success() || response.api_error().is_none() {
                out(&pretty(&response.body))?;
            }
            success(response).map(drop)
        }
        Command::Static(StaticCommand::Get { name, format, watch: false }) => {
            let body = success(client.static_get(&name).await?)?;
            match format {
                CredsFormat::Json => out(&pretty(&body)),
                CredsFormat::Table => out(&static_table(&body)),
                CredsFormat::Env => Err(Failure::new("static get prints json or table")),
            }
        }
        Command::Static(StaticCommand::Get { name, watch: true, .. }) => {
            out(&format!("{}\n", success(client.static_get(&name).await?)?))?;
            let (rotated, mut changes) = tokio::sync::mpsc::unbounded_channel();
            let watching = client.watch(move |event| {
                let ours = event["event"] == "rotated" && event["account"] == name.as_str();
                !ours || rotated.send(name.clone()).is_ok()
            });
            let printing = async {
                while let Some(name) = changes.recv().await {
                    out(&format!("{}\n", success(client.static_get(&name).await?)?))?;
                }
                Ok::<(), Failure>(())
            };
            let (watched, printed) = tokio::join!(watching, printing);
            printed?;
            success(watched?).map(drop)
        }
        Command::RotateRoot { connection } => {
            let body = success(client.rotate_root(&connection).await?)?;
            out(&format!(
                "{connection}: admin {} rotated (version {})\n",
                body["username"].as_str().unwrap_or("?"),
                body["version"]
            ))
        }
        Command::Watch => {
            let watched = client.watch(|event| out(&format!("{event}\n")).is_ok()).await?;
            success(watched).map(drop)
        }
        Command::Rotate { name, reason, overlap } => {
            let body = success(client.static_rotate(&name, reason.as_deref(), overlap.as_deref()).await?)?;
            let previous = match (body["previous_username"].as_str(), body["previous_valid_until"].as_str()) {
                (Some(user), Some(until)) => format!("; {user} keeps working until {until}"),
                _ => "; no previous credential keeps working".to_string(),
            };
            out(&format!(
                "{name}: version {} ({}){previous}\n",
                body["version"],
                body["credential"]["username"].as_str().unwrap_or("?")
            ))
        }
        Command::Serve { .. }
        | Command::Config(_)
        | Command::Seal(_)
        | Command::Audit(_)
        | Command::Plugin(_)
        | Command::Store(_)
        | Command::Exec(_)
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("handled without a client")
        }
    }
}

/// The body of a 2xx response, or the daemon's error as a [`Failure`].
fn success(response: Response) -> Result<Value, Failure> {
    if response.is_success() {
        return Ok(response.body);
    }
    let status = response.status;
    let message = match response.api_error() {
        Some(e) => format!("{} ({}, HTTP {status})", one_line(&e.message), one_line(&e.code)),
        None => {
            let reason = hyper::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("request failed");
            match &response.body {
                Value::String(text) if !text.trim().is_empty() => {
                    format!("{} (HTTP {status})", one_line(text.trim()))
                }
                _ => format!("{reason} (HTTP {status})"),
            }
        }
    };
    Err(Failure::new(message))
}

/// Writes to stdout; a closed pipe (`lessor lease list | head`) is not an
/// error worth a message.
fn out(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(format!("cannot write to stdout: {e}"))),
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// Text from the daemon, made safe to print as one line on a terminal.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Loads a config for `config check`, showing on stderr the warnings the
/// load logs (plaintext to a database on another host, say) as `serve`
/// would at start-up.
fn check_config(file: &std::path::Path) -> Result<crate::setup::Setup, crate::config::ConfigErrors> {
    let warnings = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .finish();
    tracing::subscriber::with_default(warnings, || crate::daemon::load(file))
}

#[cfg(test)]
mod tests;
