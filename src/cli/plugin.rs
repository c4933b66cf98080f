//! `lessor plugin`: run a built-in plugin out of process (`serve`), list
//! the plugins a daemon uses (`list`), and run the plugin contract against
//! any plugin and its backend (`test`, the conformance kit).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

use super::{kit, out, pretty, success, Failure};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum PluginCommand {
    /// Serve a built-in plugin over the plugin protocol, as an external
    /// plugin: `command = "/usr/bin/lessor"`, `args = ["plugin", "serve",
    /// "postgres"]` in `[plugins.NAME]`. Started by lessor, not by hand.
    Serve {
        /// The built-in plugin: postgres, mysql, aws, redis or ldap.
        name: String,
    },
    /// The plugins the daemon uses, built-in and external, with version,
    /// capabilities, digest, state and restarts.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Run the plugin contract against a connection's plugin and backend:
    /// create, log in, renew, revoke, no longer log in, not listed; revoke
    /// of an unknown user; bad role options; set_password where offered.
    /// Prints a table; exits 1 when any check fails.
    Test {
        /// The config that defines the connection (and its [plugins.NAME]).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The connection to test.
        #[arg(long)]
        connection: String,
        /// The role to issue with; the connection's first role by default.
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum ListFormat {
    Table,
    Json,
}

pub(super) fn run(command: PluginCommand, client: &Client) -> Result<ExitCode, Failure> {
    match command {
        PluginCommand::Serve { name } => serve(&name),
        PluginCommand::List { format } => {
            let body = runtime()?.block_on(async { success(client.plugins().await?) })?;
            match format {
                ListFormat::Json => out(&pretty(&body))?,
                ListFormat::Table => out(&table(&body))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Test { config, connection, role } => {
            let setup = crate::daemon::load(&config).map_err(|e| Failure::new(e.to_string()))?;
            let report = runtime()?.block_on(kit::run(&setup, &connection, role.as_deref()))?;
            out(&report.table())?;
            Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))
}

/// `lessor plugin serve NAME`: the built-in plugin's factory behind
/// `lessor_plugin::serve`, logging to stderr one line per event, each
/// starting with its level (what lessor's relay reads).
fn serve(name: &str) -> Result<ExitCode, Failure> {
    let Some((name, factory)) = crate::setup::PLUGINS.iter().find(|(p, _)| *p == name) else {
        let known: Vec<_> = crate::setup::PLUGINS.iter().map(|(p, _)| *p).collect();
        return Err(Failure::new(format!("no built-in plugin {name:?} (known: {})", known.join(", "))));
    };
    crate::daemon::init_plugin_logging();
    runtime()?
        .block_on(lessor_plugin::serve(name, env!("CARGO_PKG_VERSION"), *factory))
        .map_err(|e| Failure::new(format!("plugin {name}: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// The `list` table: one plugin per line.
fn table(body: &Value) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "KIND".into(),
        "VERSION".into(),
        "STATE".into(),
        "RESTARTS".into(),
        "CONNECTIONS".into(),
        "CAPABILITIES".into(),
        "SHA256".into(),
    ]];
    for p in body["plugins"].as_array().into_iter().flatten() {
        let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
        let list = |v: &Value| {
            let items: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(",")
            }
        };
        let state = match p["reason"].as_str() {
            Some(reason) => format!("{}: {}", text(&p["state"]), super::one_line(reason)),
            None => text(&p["state"]),
        };
        rows.push([
            text(&p["name"]),
            text(&p["kind"]),
            text(&p["version"]),
            state,
            p["restarts"].to_string(),
            list(&p["connections"]),
            list(&p["capabilities"]),
            p["sha256"].as_str().map_or("-".to_string(), |s| s[..s.len().min(16)].to_string()),
        ]);
    }
    let widths: Vec<usize> =
        (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}
