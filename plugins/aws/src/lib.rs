//! The AWS plugin of lessor: STS session credentials (AssumeRole,
//! GetFederationToken, GetSessionToken) and short-lived IAM users. Not for
//! direct use: the broker builds it from `[connections.NAME]` with
//! `plugin = "aws"` through [`factory`].
//!
//! - `config`: the connection and role settings, parsed into values that
//!   are already valid: ARNs, IAM names and paths, policy documents, and
//!   the TTL limits of each STS call, each error naming its key;
//! - `connection`: [`AwsPlugin`] as a value: the settings, the SDK clients
//!   built on first use, lessor's own key after `rotate-root`;
//! - `sts`, `iam_user`, `access_keys`: the engine's halves on that
//!   connection: STS issuance with TTLs clamped to what AWS issues, IAM
//!   users made step by step and deleted step by step (idempotently), and
//!   static access keys;
//! - `client`: the engine: the `Plugin` trait, dispatching to those halves,
//!   and the operator's "revoke older sessions" action;
//! - `error`: how the SDK's failures map to the broker's retry/blame
//!   classes, with messages that hold AWS's error code and never a key.
//!
//! Only the config types and the plugin are public; the broker talks to it
//! through [`lessor_plugin::Plugin`].

mod access_keys;
mod client;
mod config;
mod connection;
mod error;
mod iam_user;
mod sts;

use std::sync::Arc;

use lessor_plugin::{ConfigError, ConnectionContext, Plugin, PluginFactory};

pub use client::REVOKE_POLICY_NAME;
pub use config::{AwsConnectionOptions, AwsRole, AwsRoleOptions, CredentialType};
pub use connection::AwsPlugin;

/// The name this plugin is registered under (`plugin = "aws"`).
pub const PLUGIN_NAME: &str = "aws";

/// Builds the plugin for one connection: the broker's registry entry.
pub fn factory(ctx: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(AwsPlugin::new(ctx)?))
}

// The registry stores plain function pointers; keep `factory` one.
const _: PluginFactory = factory;
