//! `lessor store migrate`: copies a single node's SQLite store into a
//! PostgreSQL store, offline (no daemon may run on either: both stores'
//! locks are taken). Leases keep their ids, states, expiries and owners;
//! static accounts their versions and sealed secrets, which stay sealed
//! (the same `seal_key_file` opens them afterwards). The copied leases are
//! recorded as issued by `--node`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use secrecy::SecretString;

use super::{out, Failure};
use crate::store::{LeaseStore, Page, PostgresStore, SqliteStore, Write};

#[derive(Debug, Subcommand)]
pub(super) enum StoreCommand {
    /// Copy every lease and static account of a SQLite store into a
    /// PostgreSQL store (stop the daemon first).
    Migrate {
        /// The SQLite store, `sqlite:///path/to/lessor.db`.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The PostgreSQL store, `postgres://user@host:5432/db` (no password in it).
        #[arg(long, value_name = "URL")]
        to: String,
        /// File holding the PostgreSQL store's password.
        #[arg(long, value_name = "FILE", conflicts_with = "to_password_env")]
        to_password_file: Option<PathBuf>,
        /// Environment variable holding the PostgreSQL store's password.
        #[arg(long, value_name = "VAR")]
        to_password_env: Option<String>,
        /// The node the copied leases are recorded as issued by (the
        /// daemon's `server.node_id`); the host name when omitted.
        #[arg(long)]
        node: Option<String>,
    },
}

pub(super) fn run(command: StoreCommand) -> Result<ExitCode, Failure> {
    let StoreCommand::Migrate { from, to, to_password_file, to_password_env, node } = command;
    let password = match (to_password_file, to_password_env) {
        (Some(file), _) => Some(
            lessor_plugin::files::read_secret(&file)
                .map_err(|e| Failure::new(format!("--to-password-file: {}: {e}", file.display())))?,
        ),
        (None, Some(var)) => Some(SecretString::from(
            std::env::var(&var).map_err(|_| Failure::new(format!("--to-password-env: {var} is not set")))?,
        )),
        (None, None) => None,
    };
    let node = node.unwrap_or_else(|| crate::config::ServerConfig::default().node());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the async runtime: {e}")))?;
    let (leases, accounts) = runtime.block_on(async {
        let source = SqliteStore::open_url(&from).map_err(|e| Failure::new(format!("--from: {e}")))?;
        let target = PostgresStore::open(&to, password.as_ref(), &node)
            .await
            .map_err(|e| Failure::new(format!("--to: {e}")))?;
        migrate(&source, &target).await
    })?;
    out(&format!(
        "copied {leases} leases and {accounts} static accounts from {from} to {} as node {node:?}\n",
        crate::store::postgres::redact_url(&to)
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Copies everything; refuses a target that holds leases already, so two
/// stores are never merged by accident.
async fn migrate(source: &dyn LeaseStore, target: &dyn LeaseStore) -> Result<(u64, u64), Failure> {
    let failed = |what: &str, e: crate::store::StoreError| Failure::new(format!("{what}: {e}"));
    if !target.list("", &[], Page { after: None, limit: 1 }).await.map_err(|e| failed("--to", e))?.is_empty()
    {
        return Err(Failure::new(
            "--to: the PostgreSQL store holds leases already; migrate into an empty one",
        ));
    }
    let mut leases = 0;
    let mut after: Option<String> = None;
    loop {
        let page = source
            .list("", &[], Page { after: after.as_deref(), limit: 1000 })
            .await
            .map_err(|e| failed("--from", e))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.to_string());
        for lease in page {
            target.write(Write::Insert(lease)).await.map_err(|e| failed("--to", e))?;
            leases += 1;
        }
    }
    let mut accounts = 0;
    for name in source.static_names().await.map_err(|e| failed("--from", e))? {
        if let Some(record) = source.static_get(&name).await.map_err(|e| failed("--from", e))? {
            target.static_put(record).await.map_err(|e| failed("--to", e))?;
            accounts += 1;
        }
    }
    Ok((leases, accounts))
}
