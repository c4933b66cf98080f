//! The Redis/Valkey plugin of lessor: dynamic ACL users. Not for direct
//! use: the broker builds it from `[connections.NAME]` with
//! `plugin = "redis"` through [`factory`].
//!
//! A credential is an ACL user made with `ACL SETUSER <name> reset
//! resetchannels -@all <acl_rules…> ><password> on`: nothing is granted
//! but what the role's `acl_rules` say. Revocation ends the user's
//! sessions (`CLIENT KILL USER`) and deletes it (`ACL DELUSER`); a user
//! that is not there counts as revoked. Redis users have no expiry of their
//! own, so renewal is lessor's lease only. Tidy lists users with `ACL
//! USERS`; Redis keeps no creation time, so tidy's grace counts from the
//! sweep that first sees a user.
//!
//! - `config`: the connection's URL and the roles' `acl_rules`, checked at
//!   load (a rule that would set a password, a user's state or reset it is
//!   refused: lessor owns those);
//! - `client`: [`RedisPlugin`], the engine over one auto-reconnecting
//!   connection of the admin user.
//!
//! Passwords never reach a log or an error: every server message is
//! scrubbed of the password the command carried.

mod client;
mod config;
mod node;

use std::sync::Arc;

use lessor_plugin::{ConfigError, ConnectionContext, Plugin, PluginFactory};

pub use client::RedisPlugin;
pub use config::{RedisConnectionOptions, RedisRoleOptions};

/// The name this plugin is registered under (`plugin = "redis"`).
pub const PLUGIN_NAME: &str = "redis";

/// Builds the plugin for one connection: the broker's registry entry.
pub fn factory(ctx: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(RedisPlugin::new(ctx)?))
}

// The registry stores plain function pointers; keep `factory` one.
const _: PluginFactory = factory;
