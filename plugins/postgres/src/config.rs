//! The plugin's settings: what a `[connections.NAME]` table and a
//! `[roles.NAME]` table may say, parsed into values that are already valid.
//!
//! Config is checked once, at load, so a typo is a precise [`ConfigError`]
//! (`connections.pg_main.pasword_encoding: unknown field …`) instead of a
//! failed issuance at three in the morning. Statement templates are parsed
//! here for the same reason. The admin password never comes from these
//! tables: the broker reads it from `password_file` / `password_env` and a
//! URL that carries one is refused, so the config file can be world-readable.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lessor_plugin::options::{check_placeholders, optional_statements, parse_table, required_statements};
use lessor_plugin::template::Template;
use lessor_plugin::tls::{TlsFiles, TlsMode, TlsSettings};
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_postgres::config::SslMode;

/// How `{{password}}` is rendered in creation statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum PasswordEncoding {
    /// A SCRAM-SHA-256 verifier computed by lessor, so the plaintext never
    /// reaches the server (nor its logs, nor `pg_stat_statements`).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// The password itself; for servers or poolers that cannot take a
    /// verifier. The server hashes it according to `password_encryption`.
    #[serde(rename = "plaintext")]
    Plaintext,
}

/// The lowest count every client checked accepts: pgjdbc 42.5 (Debian 12's,
/// with ongres scram 2) refuses fewer than 4096.
fn default_scram_iterations() -> u32 {
    4096
}

impl Default for PgConnectionOptions {
    fn default() -> Self {
        Self {
            password_encoding: PasswordEncoding::default(),
            scram_iterations: default_scram_iterations(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

/// The plugin-specific keys of a `[connections.NAME]` table with
/// `plugin = "postgres"` (the broker owns `url`, `password_file`,
/// `password_env` and `max_connections`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgConnectionOptions {
    /// How `{{password}}` is rendered: `"scram-sha-256"` (default) sends a
    /// verifier, `"plaintext"` sends the password.
    #[serde(default)]
    pub password_encoding: PasswordEncoding,
    /// PBKDF2 iterations of the SCRAM-SHA-256 verifiers lessor computes
    /// (1 to 100 000; default 4096, PostgreSQL's own). The iterations
    /// stretch guessable passwords; lessor's are 16 to 128 random
    /// alphanumerics (95 to 760 bits), so below 4096 nothing is lost and
    /// issuance and every login get cheaper. But pgjdbc before 42.7.4
    /// refuses fewer than 4096 (libpq, tokio-postgres, asyncpg, pgx,
    /// npgsql, node-postgres and newer pgjdbc take 1); and pgjdbc,
    /// node-postgres and tokio-postgres (lessor's own login tests included)
    /// refuse more than 100 000.
    #[serde(default = "default_scram_iterations")]
    #[schemars(range(min = 1, max = 100000))]
    pub scram_iterations: u32,
    /// PEM file of the CA certificates the server's certificate must chain
    /// to (libpq's `sslrootcert`, which the URL may give instead). Default:
    /// the system's roots. Giving one makes the default `sslmode`
    /// `verify-full`, on loopback too.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for `cert` authentication (libpq's `sslcert`).
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key (libpq's `sslkey`); must not
    /// be readable by group or others.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
}

/// The plugin-specific keys of a `[roles.NAME]` table whose connection is a
/// PostgreSQL one, as written. [`PgRole`] is the validated form.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PgRoleOptions {
    /// Statements that create the role, run in one transaction. Required;
    /// Vault placeholders: `{{name}}`, `{{username}}`, `{{password}}`,
    /// `{{expiration}}`.
    #[serde(default)]
    pub creation_statements: Vec<String>,
    /// Statements that remove the role, each committed on its own. Default:
    /// `NOLOGIN`, terminate sessions, reassign and drop owned objects, drop.
    #[serde(default)]
    pub revocation_statements: Option<Vec<String>>,
    /// Statements that move the role's expiry. Default:
    /// `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'`.
    #[serde(default)]
    pub renew_statements: Option<Vec<String>>,
    /// Statements run, best effort, after a failed creation, for effects the
    /// creation transaction's rollback cannot undo.
    #[serde(default)]
    pub rollback_statements: Option<Vec<String>>,
}

/// A role's validated settings: what `check_role` hands the broker, and the
/// broker hands back on every call.
#[derive(Debug, Clone)]
pub struct PgRole {
    pub(crate) creation: Vec<Template>,
    pub(crate) revocation: Option<Vec<Template>>,
    pub(crate) renew: Option<Vec<Template>>,
    pub(crate) rollback: Option<Vec<Template>>,
}

impl PgRole {
    /// Validates a role table's plugin keys; `role` names it in errors.
    pub fn parse(role_name: &str, options: &toml::Table) -> Result<Self, ConfigError> {
        let prefix = format!("roles.{role_name}");
        let raw: PgRoleOptions = parse_table(options, &prefix)?;
        let key = |field: &str| format!("{prefix}.{field}");
        let creation = required_statements(
            &key("creation_statements"),
            &raw.creation_statements,
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
            "role",
        )?;
        let optional = |field: &str, list: &Option<Vec<String>>| {
            optional_statements(&key(field), list.as_deref(), "role")
        };
        let role = Self {
            creation,
            revocation: optional("revocation_statements", &raw.revocation_statements)?,
            renew: optional("renew_statements", &raw.renew_statements)?,
            rollback: optional("rollback_statements", &raw.rollback_statements)?,
        };
        check_placeholders(&[
            (&key("revocation_statements"), "revocation_statements", role.revocation.as_deref()),
            (&key("renew_statements"), "renew_statements", role.renew.as_deref()),
            (&key("rollback_statements"), "rollback_statements", role.rollback.as_deref()),
        ])?;
        // A warning, not an error: below a few thousand live leases direct
        // grants work, and many setups start that way.
        for warning in crate::grants::direct_grant_warnings(role_name, &role.creation) {
            tracing::warn!("{warning}");
        }
        Ok(role)
    }
}

/// How long opening one admin connection may take (unless the URL sets
/// `connect_timeout`), and the pool's create and recycle timeouts.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's validated settings: the admin connection and the options.
///
/// Holds the admin password (inside the `tokio_postgres::Config`), hence the
/// hand-written `Debug`.
#[derive(Clone)]
pub(crate) struct ConnectionSettings {
    pub(crate) name: String,
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) options: PgConnectionOptions,
    pub(crate) tls: TlsSettings,
    pub(crate) max_connections: usize,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("name", &self.name)
            .field("target", &target(&self.pg))
            .field("options", &self.options)
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl ConnectionSettings {
    /// Validates a connection's settings; `name` is `[connections.NAME]`.
    pub(crate) fn parse(
        name: &str,
        url: Option<&str>,
        password: Option<&SecretString>,
        max_connections: usize,
        options: &toml::Table,
    ) -> Result<Self, ConfigError> {
        let prefix = format!("connections.{name}");
        let key = |field: &str| format!("{prefix}.{field}");
        let options: PgConnectionOptions = parse_table(options, &prefix)?;
        let url = url.ok_or_else(|| {
            ConfigError::new(key("url"), "required, e.g. \"postgres://lessor_admin@db.internal:5432/app\"")
        })?;
        let (url, url_tls) = split_tls_params(url).map_err(|m| ConfigError::new(key("url"), m))?;
        // tokio-postgres's parse errors name the option, never its value.
        let mut pg = tokio_postgres::Config::from_str(&url)
            .map_err(|e| ConfigError::new(key("url"), format!("not a PostgreSQL URL: {e}")))?;
        if pg.get_password().is_some() {
            return Err(ConfigError::new(
                key("url"),
                "the URL contains a password; remove it and use password_file or password_env",
            ));
        }
        if pg.get_user().is_none() {
            return Err(ConfigError::new(
                key("url"),
                "the URL names no user, e.g. postgres://lessor_admin@host/db",
            ));
        }
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new(key("url"), "the URL names no host"));
        }
        if max_connections == 0 {
            return Err(ConfigError::new(key("max_connections"), "must be at least 1"));
        }
        if !crate::scram::ITERATIONS_RANGE.contains(&options.scram_iterations) {
            return Err(ConfigError::new(
                key("scram_iterations"),
                format!(
                    "{} is out of range: 1 to 100000 (tokio-postgres, pgjdbc and node-postgres refuse more)",
                    options.scram_iterations
                ),
            ));
        }
        let tls = url_tls.resolve(&options, &pg, &key)?;
        tls.check(&prefix, "url")?;
        pg.ssl_mode(match tls.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        if let Some(password) = password {
            pg.password(password.expose_secret().as_bytes());
        }
        if pg.get_application_name().is_none() {
            pg.application_name("lessor");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Self { name: name.to_string(), pg, options, tls, max_connections })
    }
}

/// The TLS parameters of a connection URL, which tokio-postgres does not
/// read (`sslrootcert`, `sslcert`, `sslkey`) or reads only in part
/// (`sslmode`: it knows no `verify-ca` nor `verify-full`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTls {
    mode: Option<TlsMode>,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl UrlTls {
    /// Merges the URL's files with the `tls_*` keys (one place for each)
    /// and resolves the mode for the connection's hosts.
    pub(crate) fn resolve(
        self,
        options: &PgConnectionOptions,
        pg: &tokio_postgres::Config,
        key: &dyn Fn(&str) -> String,
    ) -> Result<TlsSettings, ConfigError> {
        let pick = |from_url: Option<PathBuf>, param: &str, field: &str, from_key: &Option<PathBuf>| match (
            from_url, from_key,
        ) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                key(field),
                format!("the URL's {param} says the same; keep one of the two"),
            )),
            (url, keyed) => Ok(url.or_else(|| keyed.clone())),
        };
        // libpq 16's `sslrootcert=system`: the system's roots, and then only
        // with full verification.
        let system = self.root_cert.as_deref() == Some(std::path::Path::new("system"));
        let mode = match (system, self.mode) {
            (false, mode) => mode,
            (true, None | Some(TlsMode::VerifyFull)) => Some(TlsMode::VerifyFull),
            (true, Some(_)) => {
                return Err(ConfigError::new(
                    key("url"),
                    "sslrootcert=system needs sslmode=verify-full (as in libpq)",
                ))
            }
        };
        let root_cert = if system { None } else { self.root_cert };
        let files = TlsFiles {
            ca_file: pick(root_cert, "sslrootcert", "tls_ca_file", &options.tls_ca_file)?,
            client_cert_file: pick(
                self.cert,
                "sslcert",
                "tls_client_cert_file",
                &options.tls_client_cert_file,
            )?,
            client_key_file: pick(self.key, "sslkey", "tls_client_key_file", &options.tls_client_key_file)?,
        };
        // With several hosts, TLS may be skipped only if every one is local;
        // a `hostaddr` is where the connection really goes.
        let remote_addr = pg.get_hostaddrs().iter().find(|ip| !ip.is_loopback()).map(|ip| ip.to_string());
        let remote_name = pg.get_hosts().iter().find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) if !lessor_plugin::tls::is_local_host(name) => {
                Some(name.clone())
            }
            _ => None,
        });
        let remote = remote_addr.or(remote_name);
        #[cfg(unix)]
        let sockets_only = pg.get_hostaddrs().is_empty()
            && pg.get_hosts().iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        #[cfg(not(unix))]
        let sockets_only = false;
        // libpq's default, on this machine: TLS if the server offers it; a
        // Unix socket never carries TLS.
        let local_default = if sockets_only { TlsMode::Disable } else { TlsMode::Prefer };
        let tls = TlsSettings::resolve(mode, files, remote.as_deref().unwrap_or("localhost"), local_default);
        if sockets_only && tls.mode > TlsMode::Prefer {
            return Err(ConfigError::new(
                key("url"),
                "a Unix socket connection never uses TLS; remove sslmode and the TLS files, or connect over TCP",
            ));
        }
        Ok(tls)
    }
}

/// Takes the TLS parameters out of a connection URL (`postgres://…?sslmode=…`)
/// or key/value string (`host=… sslmode=…`), returning the rest for
/// tokio-postgres. Values in key/value strings must not be quoted.
pub(crate) fn split_tls_params(url: &str) -> Result<(String, UrlTls), String> {
    let mut tls = UrlTls::default();
    let mut take = |name: &str, value: &str| -> Result<bool, String> {
        let path = || Some(PathBuf::from(value));
        match name {
            "sslmode" => tls.mode = Some(parse_sslmode(value)?),
            "sslrootcert" => tls.root_cert = path(),
            "sslcert" => tls.cert = path(),
            "sslkey" => tls.key = path(),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return Ok((url.to_string(), tls)) };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("the URL parameter {name:?} is not valid percent-encoded UTF-8"))?;
            if !take(name, &value)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, tls));
    }
    // Key/value form: `key=value` words. Inside a quoted value nothing is
    // taken (`application_name='a sslmode=disable'` stays whole); a TLS
    // parameter written with quotes or spaces around `=` is refused rather
    // than misread.
    const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];
    let mut kept = Vec::new();
    let mut quoted = false;
    for word in url.split_whitespace() {
        let quotes = word.matches('\'').count() - word.matches("\\'").count();
        if quoted {
            quoted = quotes % 2 == 0;
            kept.push(word);
            continue;
        }
        let name = word.split('=').next().unwrap_or(word);
        if TLS_KEYS.contains(&name) {
            match word.split_once('=') {
                Some((_, value)) if !value.is_empty() && !value.contains('\'') => {
                    take(name, value)?;
                    continue;
                }
                _ => {
                    return Err(format!(
                        "write {name} as {name}=value, without quotes or spaces around `=` (a path with spaces belongs in the tls_* keys)"
                    ))
                }
            }
        }
        quoted = quotes % 2 == 1;
        kept.push(word);
    }
    Ok((kept.join(" "), tls))
}

/// libpq's `sslmode` values. `allow` (plaintext first, TLS if refused) is
/// not offered: it protects nothing `prefer` does not.
fn parse_sslmode(value: &str) -> Result<TlsMode, String> {
    Ok(match value {
        "disable" => TlsMode::Disable,
        "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        "allow" => return Err("sslmode=allow is not supported; use prefer, require or verify-full".into()),
        other => {
            return Err(format!(
                "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
            ))
        }
    })
}

/// `user@host:port/db`, for logs and `Debug`: never the password.
pub(crate) fn target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{db}")
}

#[cfg(test)]
mod tests;
