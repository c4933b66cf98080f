//! `[plugins.NAME]`: external plugins, executables lessor starts and talks
//! to over the plugin protocol (`schemas/proto/lessor/plugin/v1`). A
//! connection names one with `plugin = "NAME"` exactly as it names a
//! built-in one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{check_range, is_valid_name, Duration, SECOND};

/// `[plugins.NAME]`: one external plugin's executable and how to run it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The executable, an absolute path. Started once; one process serves
    /// every connection that names the plugin.
    pub command: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment: only these variables (the plugin does not inherit
    /// lessor's), plus `LESSOR_PLUGIN_SOCKET`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The SHA-256 of the executable, in hex: lessor refuses to start it
    /// (and to restart it) when the file's digest differs. `sha256sum FILE`.
    pub sha256: String,
    /// Run the plugin as this user (lessor must run as root to switch).
    pub user: Option<String>,
    /// Run the plugin as this group; the user's own group by default.
    pub group: Option<String>,
    /// The most detailed level of the plugin's stderr lessor relays to its
    /// own log: `error`, `warn`, `info` (default), `debug` or `trace`.
    /// Lines above it are dropped; a plugin's stderr is its own
    /// responsibility, and raising this relays whatever it prints.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How long the plugin may take to print its handshake and answer.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: Duration,
}

fn default_log_level() -> String {
    "info".into()
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The levels `log_level` takes, most severe first.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Checks each `[plugins.NAME]`; `builtin` are the names of the plugins
/// compiled in, which an external one may not shadow.
pub fn check(
    plugins: &BTreeMap<String, PluginConfig>,
    builtin: &[&str],
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, PluginConfig> {
    let mut valid = BTreeMap::new();
    for (name, plugin) in plugins {
        let key = format!("plugins.{name}");
        if !is_valid_name(name) {
            errors.push(ConfigError::new(&key, "name may hold only letters, digits, '_' and '-'"));
            continue;
        }
        if builtin.contains(&name.as_str()) {
            errors.push(ConfigError::new(
                &key,
                format!("{name:?} is a built-in plugin; give the external one a name of its own"),
            ));
            continue;
        }
        let before = errors.len();
        if !plugin.command.is_absolute() {
            errors.push(ConfigError::new(
                format!("{key}.command"),
                format!("{} is not an absolute path", plugin.command.display()),
            ));
        }
        if plugin.sha256.len() != 64 || !plugin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            errors.push(ConfigError::new(
                format!("{key}.sha256"),
                "must be the executable's SHA-256 as 64 hex digits (`sha256sum FILE`)",
            ));
        }
        if !LOG_LEVELS.contains(&plugin.log_level.as_str()) {
            errors.push(ConfigError::new(
                format!("{key}.log_level"),
                format!("{:?} is not one of {}", plugin.log_level, LOG_LEVELS.join(", ")),
            ));
        }
        if plugin.group.is_some() && plugin.user.is_none() {
            errors.push(ConfigError::new(format!("{key}.group"), "needs user: the plugin runs as that user"));
        }
        if let Some(bad) = plugin.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            errors.push(ConfigError::new(format!("{key}.env"), format!("{bad:?} is not a variable name")));
        }
        check_range(
            errors,
            &format!("{key}.start_timeout"),
            plugin.start_timeout,
            SECOND,
            Duration::from_secs(600),
        );
        if errors.len() == before {
            valid.insert(name.clone(), plugin.clone());
        }
    }
    valid
}
