//! The PostgreSQL plugin of lessor: dynamic roles made, renewed and dropped
//! through a small pool of admin connections. Not for direct use: the
//! broker builds it from `[connections.NAME]` with `plugin = "postgres"`
//! through [`factory`].
//!
//! - `config`: the connection and role settings, parsed into values that
//!   are already valid (unknown keys and bad templates fail at load, with
//!   the offending key), and the admin URL check (no password in it);
//! - `client`: [`PgPlugin`], the engine: the admin pool, the creation
//!   transaction, the renew statement and the step-by-step revocation;
//! - `pipeline`: a transaction sent in one round trip (creation, renewal);
//! - `tls`: the connector every connection goes through (rustls, libpq's
//!   `sslmode` levels, see `lessor_plugin::tls`);
//! - `revoke`: the default revocation recipe and custom statements, one role;
//! - `batch`: the default revocation recipe over many roles at once;
//! - `error`: how PostgreSQL's failures map to the broker's retry/blame
//!   classes, and the SCRAM verifier parts that the SDK's
//!   `lessor_plugin::redact` scrubs from every message with the password;
//! - `grants`: direct grants on objects and the ACL size limit (the
//!   `config check` warning, and the error that names the full object).
//!
//! Only the config types and the plugin are public; the broker talks to it
//! through [`lessor_plugin::Plugin`].

mod accounts;
mod batch;
mod client;
mod config;
mod error;
mod grants;
mod pipeline;
mod revoke;
#[doc(hidden)] // pub for its benchmark (benches/scram.rs)
pub mod scram;
mod tls;

use std::sync::Arc;

use lessor_plugin::{ConfigError, ConnectionContext, Plugin, PluginFactory};

pub use client::PgPlugin;
pub use config::{PasswordEncoding, PgConnectionOptions, PgRole, PgRoleOptions};
/// TLS for PostgreSQL connections made outside the plugin (the lease store).
pub use tls::{for_url as connection_for_url, PgTls};

/// The name this plugin is registered under (`plugin = "postgres"`).
pub const PLUGIN_NAME: &str = "postgres";

/// Builds the plugin for one connection: the broker's registry entry.
pub fn factory(ctx: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(PgPlugin::new(ctx)?))
}

// The registry stores plain function pointers; keep `factory` one.
const _: PluginFactory = factory;
