//! The MySQL/MariaDB plugin of lessor: dynamic users made and dropped
//! through a small pool of admin connections. Not for direct use: the
//! broker builds it from `[connections.NAME]` with `plugin = "mysql"`
//! through [`factory`].
//!
//! - `config`: the connection and role settings, parsed into values that
//!   are already valid (unknown keys, bad templates and usernames that
//!   cannot fit fail at load, with the offending key), and the admin URL
//!   check (no password in it);
//! - `client`: [`MySqlPlugin`], the engine: the admin pool, the creation
//!   statements with their rollback, the lock/kill/drop revocation and the
//!   user listing for tidy, on MySQL and MariaDB alike;
//! - `batch`: the default revocation recipe over many users at once;
//! - `connections`: the admin pool, one-off connections and what TLS
//!   asks of them;
//! - `tls`: the driver's TLS options for every connection the plugin
//!   opens (MySQL's `ssl-mode` levels, see `lessor_plugin::tls`);
//! - `error`: how the servers' error codes map to the broker's retry/blame
//!   classes; messages are scrubbed of passwords with the SDK's
//!   `lessor_plugin::redact`.
//!
//! Only the config types and the plugin are public; the broker talks to it
//! through [`lessor_plugin::Plugin`].

mod accounts;
mod batch;
mod client;
mod config;
mod connections;
mod error;
mod tls;

use std::sync::Arc;

use lessor_plugin::{ConfigError, ConnectionContext, Plugin, PluginFactory};

pub use client::MySqlPlugin;
pub use config::{MySqlConnectionOptions, MySqlPasswordEncoding, MySqlRole, MySqlRoleOptions, MySqlTlsMode};

/// The name this plugin is registered under (`plugin = "mysql"`).
pub const PLUGIN_NAME: &str = "mysql";

/// Builds the plugin for one connection: the broker's registry entry.
pub fn factory(ctx: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(MySqlPlugin::new(ctx)?))
}

// The registry stores plain function pointers; keep `factory` one.
const _: PluginFactory = factory;
