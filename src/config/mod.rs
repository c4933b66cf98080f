//! The TOML config: its types (which also generate
//! `schemas/config.schema.json`), and the check that turns a parsed file
//! into a [`ValidatedConfig`]: plain data, every key in range, and every
//! connection a role or static account names known (policies' references
//! are checked where they are compiled, `Policies::from_config`).
//!
//! Nothing here builds a runtime object: plugins, the seal key and the
//! compiled policies are built from their sections by `crate::setup` and
//! `crate::policy`, in `crate::daemon::build`, which adds their errors to
//! the ones found here, so `lessor config check` reports every problem at
//! once with the file and the dotted key it concerns.

pub mod containers;
pub mod credentials;
pub mod duration;
pub mod plugins;
pub mod policies;
mod server;
pub mod statics;
mod tidy;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use lessor_plugin::names;
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

pub use containers::{ContainersConfig, EngineKind};
pub use credentials::{CredentialConfig, CredentialFormat};
pub use duration::Duration;
pub use plugins::PluginConfig;
pub use policies::{AdminConfig, MatchConfig, PolicyConfig};
pub use server::ServerConfig;
pub use statics::{RotationSchedule, StaticAccount, StaticAccountConfig, Strategy};
pub use tidy::{
    TidySettings, DEFAULT_GRACE as DEFAULT_TIDY_GRACE, DEFAULT_INTERVAL as DEFAULT_TIDY_INTERVAL,
};

/// A lessor config file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The daemon itself: socket, store, limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// External plugins: executables lessor starts and talks to over the
    /// plugin protocol, by the name connections use in `plugin = "…"`.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Backends lessor holds an admin credential for, by name.
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Dynamic-credential roles, by name. A role's leases are named
    /// `<role>/<random>`.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// Long-lived accounts whose passwords lessor rotates, by name.
    #[serde(default)]
    pub static_accounts: BTreeMap<String, StaticAccountConfig>,
    /// Who may do what; without any, only admins may issue.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Credentials systemd loads for units through the credentials socket
    /// (`LoadCredential=ID:/run/lessor/credentials.sock`), by id.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// The container engine that says who a containerised caller is.
    pub containers: Option<ContainersConfig>,
}

fn default_max_connections() -> usize {
    12
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tidy_grace() -> Duration {
    tidy::DEFAULT_GRACE
}
fn default_tidy_interval() -> Duration {
    tidy::DEFAULT_INTERVAL
}
fn default_revocation_workers() -> usize {
    4
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_share_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_password_length() -> usize {
    names::DEFAULT_PASSWORD_LEN
}

/// `[connections.NAME]`: one backend and lessor's admin credential for it.
/// Keys not listed here belong to the plugin (e.g. PostgreSQL's
/// `password_encoding`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ConnectionConfig {
    /// Which plugin talks to this backend: `postgres`.
    pub plugin: String,
    /// The backend's address, without a password.
    pub url: Option<String>,
    /// File holding the admin password (trailing newline ignored). Keep it
    /// mode 0600.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the admin password.
    pub password_env: Option<String>,
    /// The most admin connections lessor opens to this backend.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How many of the admin connections are kept for revocations, apart
    /// from issuance (which gets the rest). Less than `max_connections`.
    #[serde(default = "default_revocation_workers")]
    pub revocation_workers: usize,
    /// The longest one backend operation (create, renew, revoke) may take
    /// before it counts as a failure and is retried.
    #[serde(default = "default_operation_timeout")]
    pub operation_timeout: Duration,
    /// Sweep users under `tidy_prefix` that no lease covers (at start-up,
    /// every `tidy_interval`, and on `lessor tidy`).
    #[serde(default)]
    pub tidy: bool,
    /// The username prefix lessor owns on this backend, e.g. `"v_"`.
    /// Required when `tidy = true`; must not match the admin user.
    pub tidy_prefix: Option<String>,
    /// How old a user no lease covers must be before tidy drops it.
    #[serde(default = "default_tidy_grace")]
    pub tidy_grace: Duration,
    /// How often tidy sweeps this connection.
    #[serde(default = "default_tidy_interval")]
    pub tidy_interval: Duration,
    /// Plugin-specific settings.
    #[serde(flatten)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub options: toml::Table,
}

/// `[roles.NAME]`: a kind of dynamic credential. Keys not listed here
/// belong to the connection's plugin (e.g. `creation_statements`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RoleConfig {
    /// The connection (`[connections.NAME]`) whose backend the role lives in.
    pub connection: String,
    /// TTL of a lease when the request names none.
    #[serde(default = "default_ttl")]
    pub default_ttl: Duration,
    /// The longest a lease may live, renewals included, from issuance.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Duration,
    /// Username template in `[a-z0-9_]`: `{role}`, `{random}` (required)
    /// and the caller's `{container}`, `{k8s_namespace}`, `{unit}` and
    /// `{user}` (sanitised, and shortened before `{random}` is). Default
    /// `v_{role}_{random}`.
    pub username_template: Option<String>,
    /// Length of generated passwords.
    #[serde(default = "default_password_length")]
    pub password_length: usize,
    /// The most live leases of this role at once (429 beyond).
    pub max_leases: Option<usize>,
    /// `workload`: callers with the same identity (the policy that
    /// granted them, and their container's image and labels, or their
    /// systemd unit, or their uid and executable) get the same live lease
    /// instead of a new user each, counted once against quotas. `none` (the
    /// default): a lease of its own for every request.
    #[serde(default)]
    pub share: Share,
    /// With `share = "workload"`: how long the lease outlives its last
    /// holder (a container or unit with no process left, or a process
    /// that exited) before it is revoked.
    #[serde(default = "default_share_grace")]
    pub share_grace: Duration,
    /// Plugin-specific settings.
    #[serde(flatten)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub options: toml::Table,
}

/// Whether a role's leases are shared (`[roles.NAME] share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    /// A lease of its own for every request.
    #[default]
    None,
    /// One live lease per workload.
    Workload,
}

/// A config whose every key has been checked: plain data, from which
/// each component builds its runtime form (`crate::setup`).
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    /// Where the config came from, for messages.
    pub source: String,
    pub server: ServerConfig,
    pub socket_mode: u32,
    /// External plugins with valid settings.
    pub plugins: BTreeMap<String, PluginConfig>,
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Tidy's settings of each connection with `tidy = true`.
    pub tidy: BTreeMap<String, TidySettings>,
    pub roles: BTreeMap<String, RoleConfig>,
    pub static_accounts: BTreeMap<String, StaticAccount>,
    pub policies: Vec<PolicyConfig>,
    pub credentials: BTreeMap<String, CredentialConfig>,
    pub containers: Option<ContainersConfig>,
}

/// A parsed config and every problem found in it. `config` holds every
/// role and static account, those with problems included (and every
/// validly named connection), so the build step can report its own
/// problems for them at the same time.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: ValidatedConfig,
    pub errors: Vec<ConfigError>,
}

impl Checked {
    /// Whether a problem was found at `key` or below it (`roles.app` covers
    /// `roles.app.max_ttl`, not `roles.app_ro`).
    pub fn has_error_at(&self, key: &str) -> bool {
        self.errors.iter().any(|e| {
            e.key.strip_prefix(key).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// The config, or its problems with the file they are in.
    pub fn into_result(self) -> Result<ValidatedConfig, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(self.config)
        } else {
            Err(ConfigErrors { file: self.config.source, errors: self.errors })
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file (or other origin) the config came from.
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file, e)?;
        }
        Ok(())
    }
}

/// Reads, parses and checks a config file. Only a file that cannot be
/// read or parsed is an `Err`; what checking found is in [`Checked`].
pub fn read(path: &Path) -> Result<Checked, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: source.clone(),
        errors: vec![ConfigError::new("(file)", format!("cannot read: {e}"))],
    })?;
    parse(&text, &source)
}

/// Parses and checks config text; `source` names it in messages.
pub fn parse(text: &str, source: &str) -> Result<Checked, ConfigErrors> {
    let config: Config = toml::from_str(text)
        .map_err(|e| ConfigErrors { file: source.to_string(), errors: vec![toml_error(text, &e)] })?;
    Ok(check(config, source))
}

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    let at = e.span().map(|span| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!("line {line}")
    });
    ConfigError::new(at.unwrap_or_else(|| "(file)".into()), message)
}

/// A name usable in lease ids, URLs and messages without escaping.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check(config: Config, source: &str) -> Checked {
    let mut errors = Vec::new();

    let socket_mode = match u32::from_str_radix(config.server.socket_mode.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => mode,
        _ => {
            errors.push(ConfigError::new(
                "server.socket_mode",
                format!("{:?} is not an octal file mode such as \"0660\"", config.server.socket_mode),
            ));
            0o660
        }
    };
    server::check_store(&config.server, &mut errors);
    if config.server.max_body_bytes == 0 {
        errors.push(ConfigError::new("server.max_body_bytes", "must be at least 1"));
    }
    let server = &config.server;
    check_range(&mut errors, "server.request_timeout", server.request_timeout, SECOND, HOUR);
    check_range(&mut errors, "server.header_timeout", server.header_timeout, SECOND, HOUR);
    for (key, value) in [
        ("server.max_connections", server.max_connections),
        ("server.max_connections_per_uid", server.max_connections_per_uid),
        ("server.max_watches_per_uid", server.max_watches_per_uid),
    ] {
        if value == 0 {
            errors.push(ConfigError::new(key, "must be at least 1"));
        }
    }
    if server.admin_connections >= server.max_connections {
        errors.push(ConfigError::new(
            "server.admin_connections",
            format!("must be below server.max_connections ({})", server.max_connections),
        ));
    }
    check_range(&mut errors, "server.revoked_retention", server.revoked_retention, Duration::ZERO, TEN_YEARS);
    check_range(&mut errors, "server.irrevocable_retry", server.irrevocable_retry, SECOND, WEEK);
    check_range(&mut errors, "server.expiry_window", server.expiry_window, SECOND, WEEK);

    let plugins = plugins::check(&config.plugins, BUILTIN_PLUGINS, &mut errors);
    let mut connections = BTreeMap::new();
    let mut tidy = BTreeMap::new();
    for (name, conn) in &config.connections {
        let key = format!("connections.{name}");
        if !is_valid_name(name) {
            errors.push(ConfigError::new(&key, "name may hold only letters, digits, '_' and '-'"));
            continue;
        }
        if conn.max_connections == 0 {
            errors.push(ConfigError::new(format!("{key}.max_connections"), "must be at least 1"));
        }
        if conn.revocation_workers == 0 {
            errors.push(ConfigError::new(format!("{key}.revocation_workers"), "must be at least 1"));
        } else if conn.revocation_workers >= conn.max_connections {
            errors.push(ConfigError::new(
                format!("{key}.revocation_workers"),
                format!(
                    "{} leaves no admin connection for issuance: it must be less than max_connections ({})",
                    conn.revocation_workers, conn.max_connections
                ),
            ));
        }
        check_range(&mut errors, &format!("{key}.operation_timeout"), conn.operation_timeout, SECOND, HOUR);
        check_range(&mut errors, &format!("{key}.tidy_grace"), conn.tidy_grace, Duration::ZERO, TEN_YEARS);
        check_range(&mut errors, &format!("{key}.tidy_interval"), conn.tidy_interval, SECOND, TEN_YEARS);
        match TidySettings::from_config(&key, conn) {
            Ok(Some(settings)) => {
                tidy.insert(name.clone(), settings);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        connections.insert(name.clone(), conn.clone());
    }

    let mut roles = BTreeMap::new();
    for (name, role) in &config.roles {
        let key = format!("roles.{name}");
        if !is_valid_name(name) {
            // Still kept: a policy naming it is not told it names nothing.
            errors.push(ConfigError::new(&key, "name may hold only letters, digits, '_' and '-'"));
        }
        if role.default_ttl.as_std().is_zero() {
            errors.push(ConfigError::new(format!("{key}.default_ttl"), "must be longer than 0s"));
        }
        if role.share == Share::Workload {
            check_range(
                &mut errors,
                &format!("{key}.share_grace"),
                role.share_grace,
                Duration::ZERO,
                role.max_ttl,
            );
        }
        if role.default_ttl > role.max_ttl {
            errors.push(ConfigError::new(
                format!("{key}.default_ttl"),
                format!("{} is longer than max_ttl {}", role.default_ttl, role.max_ttl),
            ));
        }
        if role.max_ttl > TEN_YEARS {
            errors.push(ConfigError::new(
                format!("{key}.max_ttl"),
                format!("{} is longer than ten years", role.max_ttl),
            ));
        }
        if role.max_leases == Some(0) {
            errors.push(ConfigError::new(format!("{key}.max_leases"), "must be at least 1"));
        }
        if !(16..=128).contains(&role.password_length) {
            errors.push(ConfigError::new(format!("{key}.password_length"), "must be between 16 and 128"));
        }
        if !config.connections.contains_key(&role.connection) {
            errors.push(ConfigError::new(
                format!("{key}.connection"),
                format!("unknown connection {:?}", role.connection),
            ));
        }
        roles.insert(name.clone(), role.clone());
    }

    let static_accounts = statics::check(&config.static_accounts, &config.connections, &tidy, &mut errors);
    if config.server.seal_key_file.is_none() && !config.static_accounts.is_empty() {
        errors.push(ConfigError::new(
            "server.seal_key_file",
            "required with static_accounts: their passwords are stored sealed with it \
             (make one with `lessor seal new-key FILE`)",
        ));
    }

    credentials::check(&config.credentials, &config.roles, &config.static_accounts, &mut errors);
    if let Some(containers) = &config.containers {
        containers::check(containers, &mut errors);
    }

    Checked {
        config: ValidatedConfig {
            source: source.to_string(),
            server: config.server,
            socket_mode,
            plugins,
            connections,
            tidy,
            roles,
            static_accounts,
            policies: config.policies,
            credentials: config.credentials,
            containers: config.containers,
        },
        errors,
    }
}

const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const WEEK: Duration = Duration::from_secs(7 * 86_400);
/// The longest any configured duration may be: every instant lessor
/// computes from one (now + TTL, now − retention) stays far inside the
/// range of a timestamp.
pub(crate) const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);

/// Reports `value` at `key` unless it lies in `min..=max`.
fn check_range(errors: &mut Vec<ConfigError>, key: &str, value: Duration, min: Duration, max: Duration) {
    if value < min {
        errors.push(ConfigError::new(key, format!("{value} is too short: it must be at least {min}")));
    } else if value > max {
        errors.push(ConfigError::new(key, format!("{value} is too long: it must be at most {max}")));
    }
}

/// The plugins compiled in: an external plugin may not take one's name.
/// (`crate::setup::PLUGINS` registers their factories.)
pub const BUILTIN_PLUGINS: &[&str] = &[
    "postgres",
    lessor_mysql::PLUGIN_NAME,
    lessor_aws::PLUGIN_NAME,
    lessor_redis::PLUGIN_NAME,
    lessor_ldap::PLUGIN_NAME,
];

/// Each plugin's own keys for connection and role tables, for the schema.
type OptionSchemas =
    (&'static str, fn() -> schemars::schema::RootSchema, fn() -> schemars::schema::RootSchema);

static PLUGIN_SCHEMAS: &[OptionSchemas] = &[
    (
        "postgres",
        || schemars::schema_for!(lessor_postgres::PgConnectionOptions),
        || schemars::schema_for!(lessor_postgres::PgRoleOptions),
    ),
    (
        lessor_mysql::PLUGIN_NAME,
        || schemars::schema_for!(lessor_mysql::MySqlConnectionOptions),
        || schemars::schema_for!(lessor_mysql::MySqlRoleOptions),
    ),
    (
        lessor_aws::PLUGIN_NAME,
        || schemars::schema_for!(lessor_aws::AwsConnectionOptions),
        || schemars::schema_for!(lessor_aws::AwsRoleOptions),
    ),
    (
        lessor_redis::PLUGIN_NAME,
        || schemars::schema_for!(lessor_redis::RedisConnectionOptions),
        || schemars::schema_for!(lessor_redis::RedisRoleOptions),
    ),
];

/// The JSON Schema of the config file, as committed in
/// `schemas/config.schema.json`. Plugin-specific keys are merged into the
/// connection and role tables, their descriptions prefixed with the
/// plugin's name, so editors can complete and document them.
pub fn json_schema() -> String {
    use schemars::schema::Schema;
    fn description(schema: &mut Schema) -> Option<&mut String> {
        match schema {
            Schema::Object(object) => Some(object.metadata().description.get_or_insert_default()),
            Schema::Bool(_) => None,
        }
    }
    let mut root = schemars::schema_for!(Config);
    for (plugin, connection, role) in PLUGIN_SCHEMAS {
        for (target, options) in [("ConnectionConfig", connection()), ("RoleConfig", role())] {
            root.definitions.extend(options.definitions);
            let Some(Schema::Object(table)) = root.definitions.get_mut(target) else { continue };
            let properties = &mut table.object().properties;
            for (key, mut schema) in options.schema.object.map(|o| o.properties).unwrap_or_default() {
                let text = format!("[{plugin}] {}", description(&mut schema).cloned().unwrap_or_default());
                // A key several plugins share (creation_statements) keeps the
                // first schema and every plugin's description.
                if let Some(shared) = properties.get_mut(&key) {
                    if let Some(d) = description(shared) {
                        d.push_str(&format!("\n\n{text}"));
                    }
                } else {
                    if let Some(d) = description(&mut schema) {
                        *d = text;
                    }
                    properties.insert(key, schema);
                }
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&root).expect("schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
pub(crate) mod tests;
