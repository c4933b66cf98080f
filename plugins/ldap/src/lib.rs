//! The LDAP plugin of lessor: directory entries made from a role's LDIF,
//! and static accounts whose passwords lessor rotates. Not for direct use:
//! the broker builds it from `[connections.NAME]` with `plugin = "ldap"`
//! through [`factory`].
//!
//! A credential is an entry the role's `creation_ldif` adds (Vault's LDAP
//! secrets engine's dynamic roles, placeholders and all), made a `member`
//! of the role's `groups`; the caller gets its name, its DN and its
//! password. Revocation leaves the groups and runs `deletion_ldif`; an
//! entry already gone counts as revoked. LDAP entries have no expiry of
//! their own, so renewal is lessor's lease only; a bind lives as long as
//! its connection, so there is no session to end either.
//!
//! - `config`: the connection (URL, TLS, bind DN, schema, where users live)
//!   and the roles' LDIF and groups, checked at load;
//! - `ldif`: LDIF change records with placeholders, parsed before anything
//!   is substituted, so a value can never change the records' shape;
//! - `template`: the placeholders, in Vault's Go-template spelling and in
//!   lessor's;
//! - `password`: what is written instead of a password (a salted hash for
//!   OpenLDAP, `unicodePwd` for AD);
//! - `error`: LDAP result codes as the broker's retryable or permanent
//!   errors;
//! - `client`: [`LdapPlugin`], the engine over one connection bound as the
//!   admin.
//!
//! Passwords never reach a log or an error, nor (for OpenLDAP) the
//! directory itself in clear.

mod client;
mod config;
mod error;
mod ldif;
mod password;
mod template;

use std::sync::Arc;

use lessor_plugin::{ConfigError, ConnectionContext, Plugin, PluginFactory};

pub use client::LdapPlugin;
pub use config::{LdapConnectionOptions, LdapRoleOptions};
pub use password::PasswordHash;
pub use password::Schema;

/// The name this plugin is registered under (`plugin = "ldap"`).
pub const PLUGIN_NAME: &str = "ldap";

/// Builds the plugin for one connection: the broker's registry entry.
pub fn factory(ctx: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    Ok(Arc::new(LdapPlugin::new(ctx)?))
}

// The registry stores plain function pointers; keep `factory` one.
const _: PluginFactory = factory;
