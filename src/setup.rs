//! A config's runtime form: each connection's plugin built, each role
//! checked by its plugin, the seal key open and the policies compiled.
//!
//! `crate::config` hands over plain, checked data; the builders here turn
//! one section each into what the broker, rotator and tidy run on, and
//! `crate::daemon::build` calls them in order, collecting every error with
//! its file and dotted key (so `lessor config check` is a complete answer).
//! The plugins lessor knows are registered in [`PLUGINS`], the one table.

use std::collections::BTreeMap;
use std::sync::Arc;

use lessor_plugin::names::{self, UsernameTemplate};
use lessor_plugin::{Capabilities, ConfigError, ConnectionContext, Plugin, PluginFactory, RoleSettings};
use secrecy::SecretString;

use crate::config::{
    ConnectionConfig, Duration, RoleConfig, StaticAccount, Strategy, TidySettings, ValidatedConfig,
};
use crate::external::{Hosts, Remote};
use crate::policy::Policies;
use crate::seal::Sealer;

/// The built-in plugins, by the name used in `plugin = "…"`.
pub static PLUGINS: &[(&str, PluginFactory)] = &[
    ("postgres", lessor_postgres::factory),
    (lessor_mysql::PLUGIN_NAME, lessor_mysql::factory),
    (lessor_aws::PLUGIN_NAME, lessor_aws::factory),
    (lessor_redis::PLUGIN_NAME, lessor_redis::factory),
    (lessor_ldap::PLUGIN_NAME, lessor_ldap::factory),
];

/// Everything the daemon runs on, built from one config.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The checked config the parts were built from.
    pub config: ValidatedConfig,
    pub connections: BTreeMap<String, Connection>,
    pub roles: BTreeMap<String, Role>,
    /// The key static secrets are sealed with, when `seal_key_file` is set.
    pub sealer: Option<Arc<Sealer>>,
    /// Who may do what.
    pub policies: Policies,
    /// The external plugins' processes.
    pub hosts: Hosts,
}

/// A connection ready to serve.
#[derive(Debug, Clone)]
pub struct Connection {
    pub name: String,
    pub plugin: Arc<dyn Plugin>,
    pub max_connections: usize,
    pub revocation_workers: usize,
    pub operation_timeout: Duration,
    /// Tidy's settings, when `tidy = true`.
    pub tidy: Option<TidySettings>,
}

impl Connection {
    /// Builds `[connections.NAME]`'s plugin with its admin credential
    /// (read from `password_file` or `password_env`). The plugin does not
    /// reach its backend yet, except an external one, whose process builds
    /// it (and checks its options) now.
    pub fn build(
        name: &str,
        config: &ConnectionConfig,
        tidy: Option<TidySettings>,
        hosts: &Hosts,
    ) -> Result<Self, ConfigError> {
        let key = format!("connections.{name}");
        let builtin = PLUGINS.iter().find(|(plugin, _)| *plugin == config.plugin);
        let external = hosts.get(&config.plugin);
        if builtin.is_none() && external.is_none() {
            let known: Vec<_> =
                PLUGINS.iter().map(|(p, _)| *p).chain(hosts.iter().map(|h| h.name())).collect();
            return Err(ConfigError::new(
                format!("{key}.plugin"),
                format!(
                    "unknown plugin {:?} (known: {}; an external one needs a [plugins.{}] table)",
                    config.plugin,
                    known.join(", "),
                    config.plugin
                ),
            ));
        }
        let password = admin_password(&key, config)?;
        let context = ConnectionContext {
            name,
            url: config.url.as_deref(),
            password,
            max_connections: config.max_connections.max(1),
            operation_timeout: config.operation_timeout.as_std(),
            options: &config.options,
        };
        let plugin: Arc<dyn Plugin> = match (builtin, external) {
            (Some((_, factory)), _) => factory(context)?,
            (None, Some(host)) => Arc::new(Remote::configure(host.clone(), context)?),
            (None, None) => unreachable!("refused above"),
        };
        Ok(Self {
            name: name.to_string(),
            plugin,
            max_connections: config.max_connections.max(2),
            revocation_workers: config.revocation_workers.max(1),
            operation_timeout: config.operation_timeout,
            tidy,
        })
    }

    /// The checks of `[static_accounts.NAME]` only the connection's plugin
    /// can make: the strategy fits it, the usernames are ones it can hold,
    /// none is its admin.
    pub fn check_static(&self, account: &StaticAccount) -> Vec<ConfigError> {
        let key = format!("static_accounts.{}", account.name);
        let mut errors = Vec::new();
        let plugin = &self.plugin;
        let strategies = plugin.static_strategies();
        if !strategies.contains(&account.strategy.as_str()) {
            let fits = match strategies {
                [] => "none: it rotates no static accounts".to_string(),
                some => some.join(", "),
            };
            errors.push(ConfigError::new(
                format!("{key}.strategy"),
                format!(
                    "{} does not fit connection {:?}; the {} plugin's strategies are {fits}",
                    account.strategy.as_str(),
                    account.connection,
                    plugin.name()
                ),
            ));
        }
        let aws = account.strategy == Strategy::AccessKey;
        // IAM user names also take `+=,@`; database names are kept to what
        // every statement quotes safely.
        let (max, extra): (usize, &[u8]) =
            if aws { (64, b"_-.+=,@") } else { (plugin.capabilities().max_username_len, b"_-.") };
        for (i, username) in account.usernames.iter().enumerate() {
            let ok = !username.is_empty()
                && username.len() <= max
                && username.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
            if !ok {
                errors.push(ConfigError::new(
                    format!("{key}.usernames[{i}]"),
                    format!(
                        "{username:?} must be 1–{max} letters, digits or {}",
                        String::from_utf8_lossy(extra)
                    ),
                ));
            }
            if plugin.admin_username().as_deref() == Some(username.as_str()) {
                errors.push(ConfigError::new(
                    format!("{key}.usernames[{i}]"),
                    format!(
                        "{username:?} is the admin of connection {:?}: rotate it with `lessor rotate-root`, \
                         which also switches lessor's own connections to the new password",
                        account.connection
                    ),
                ));
            }
        }
        errors
    }
}

/// A role ready to serve.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub connection: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub username: UsernameTemplate,
    pub password_length: usize,
    pub max_leases: Option<usize>,
    /// `share = "workload"`: the `share_grace`.
    pub share: Option<Duration>,
    pub capabilities: Capabilities,
    pub settings: RoleSettings,
}

impl Role {
    /// Builds `[roles.NAME]` on its connection: the username template
    /// within the backend's limit, the plugin's own options checked by the
    /// plugin (`check_role`, and `check_ttls` when `ttls_valid`: TTLs the
    /// config check refused are not checked again).
    pub fn build(
        name: &str,
        config: &RoleConfig,
        connection: &Connection,
        ttls_valid: bool,
    ) -> Result<Self, Vec<ConfigError>> {
        let key = format!("roles.{name}");
        let plugin = &connection.plugin;
        let mut errors = Vec::new();
        let max_username_len = plugin.capabilities().max_username_len;
        let template_text = config.username_template.as_deref().unwrap_or(names::DEFAULT_TEMPLATE);
        let username = UsernameTemplate::parse(template_text, max_username_len)
            .map_err(|e| {
                errors.push(ConfigError::new(
                    format!("{key}.username_template"),
                    format!(
                        "{template_text:?}: {e} (the {} limit is {max_username_len} bytes)",
                        plugin.name()
                    ),
                ))
            })
            .ok();
        let settings = plugin
            .check_role(name, &config.options)
            .and_then(|s| match ttls_valid {
                true => plugin
                    .check_ttls(name, &s, config.default_ttl.as_std(), config.max_ttl.as_std())
                    .map(|()| s),
                false => Ok(s),
            })
            .map_err(|e| errors.push(e))
            .ok();
        let (Some(username), Some(settings)) = (username, settings) else {
            return Err(errors);
        };
        Ok(Self {
            name: name.to_string(),
            connection: config.connection.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            username,
            password_length: config.password_length,
            max_leases: config.max_leases,
            share: (config.share == crate::config::Share::Workload).then_some(config.share_grace),
            capabilities: plugin.role_capabilities(&settings),
            settings,
        })
    }
}

/// The admin password of a connection, from `password_file` or
/// `password_env`; `None` when neither is set.
fn admin_password(key: &str, conn: &ConnectionConfig) -> Result<Option<SecretString>, ConfigError> {
    match (&conn.password_file, &conn.password_env) {
        (Some(_), Some(_)) => Err(ConfigError::new(key, "set password_file or password_env, not both")),
        (Some(file), None) => lessor_plugin::files::read_secret(file).map(Some).map_err(|e| {
            ConfigError::new(format!("{key}.password_file"), format!("{}: {e}", file.display()))
        }),
        (None, Some(var)) => match std::env::var(var) {
            Ok(password) if !password.is_empty() => Ok(Some(SecretString::from(password))),
            _ => Err(ConfigError::new(
                format!("{key}.password_env"),
                format!("environment variable {var} is not set or empty"),
            )),
        },
        (None, None) => Ok(None),
    }
}
