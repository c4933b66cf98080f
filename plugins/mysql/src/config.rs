//! The plugin's settings: what a `[connections.NAME]` table and a
//! `[roles.NAME]` table may say, parsed into values that are already valid.
//!
//! Config is checked once, at load, so a typo is a precise [`ConfigError`]
//! (`connections.shop.max_username_lenght: unknown field …`) rather than a
//! failed issuance. Statement templates are parsed here for the same
//! reason. The admin password never comes from these tables: the broker
//! reads it from `password_file` / `password_env`, and a URL that carries
//! one is refused, so the config file can be world-readable.

use std::fmt;
use std::path::PathBuf;

use lessor_plugin::options::{check_placeholders, optional_statements, parse_table, required_statements};
use lessor_plugin::template::Template;
use lessor_plugin::tls::{TlsFiles, TlsMode, TlsSettings};
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// MySQL's limit on user names (since 5.7.8; 16 before). MariaDB 10.11
/// accepts 128.
pub(crate) const DEFAULT_MAX_USERNAME_LEN: usize = 32;
/// The longest user name any supported server accepts (MariaDB).
pub(crate) const LONGEST_USERNAME_LEN: usize = 128;
/// MySQL's port when the URL names none.
pub(crate) const DEFAULT_PORT: u16 = 3306;

fn default_max_username_length() -> usize {
    DEFAULT_MAX_USERNAME_LEN
}

/// How `{{password}}` is rendered in creation statements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum MySqlPasswordEncoding {
    /// The password itself, which the server hashes with its default
    /// authentication plugin. Works on every server.
    #[default]
    #[serde(rename = "plaintext")]
    Plaintext,
    /// The `mysql_native_password` hash (`*` and 40 hex digits) computed by
    /// lessor, so the plaintext never reaches the server nor its logs. For
    /// `IDENTIFIED BY PASSWORD '{{password}}'` (MariaDB) or `IDENTIFIED WITH
    /// mysql_native_password AS '{{password}}'` (MySQL 8.0 with that plugin
    /// enabled).
    #[serde(rename = "mysql_native_password")]
    MysqlNativePassword,
}

/// The plugin-specific keys of a `[connections.NAME]` table with
/// `plugin = "mysql"` (the broker owns `url`, `password_file`,
/// `password_env`, `max_connections` and the other shared keys).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MySqlConnectionOptions {
    /// The longest user name the server accepts: 32 (MySQL ≥ 5.7.8, the
    /// default), 16 for MySQL 5.6 and older, up to 128 for MariaDB (10.11).
    /// Username templates are checked against it at load.
    #[serde(default = "default_max_username_length")]
    pub max_username_length: usize,
    /// How `{{password}}` is rendered: `"plaintext"` (default) sends the
    /// password, `"mysql_native_password"` sends its hash.
    #[serde(default)]
    pub password_encoding: MySqlPasswordEncoding,
    /// TLS to the server, in MySQL's `--ssl-mode` words: `disabled`,
    /// `preferred`, `required` (encrypted, certificate not checked),
    /// `verify_ca` (chain checked) or `verify_identity` (chain and host
    /// name). Default: `verify_identity` for a host that is not loopback (or
    /// when a TLS file is given), `disabled` on loopback and Unix sockets.
    #[serde(default)]
    pub tls_mode: Option<MySqlTlsMode>,
    /// PEM file of the CA certificates the server's certificate must chain
    /// to. Default: the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for accounts that `REQUIRE X509`.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key; must not be readable by
    /// group or others.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
}

impl Default for MySqlConnectionOptions {
    fn default() -> Self {
        Self {
            max_username_length: DEFAULT_MAX_USERNAME_LEN,
            password_encoding: MySqlPasswordEncoding::default(),
            tls_mode: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

/// `tls_mode`: MySQL's names for the TLS levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MySqlTlsMode {
    /// No TLS.
    Disabled,
    /// TLS when the server offers it; no verification.
    Preferred,
    /// TLS or no connection; the certificate is not checked.
    Required,
    /// TLS with a certificate chaining to a trusted CA.
    VerifyCa,
    /// TLS with a trusted certificate for the host connected to.
    VerifyIdentity,
}

impl From<MySqlTlsMode> for TlsMode {
    fn from(mode: MySqlTlsMode) -> Self {
        match mode {
            MySqlTlsMode::Disabled => Self::Disable,
            MySqlTlsMode::Preferred => Self::Prefer,
            MySqlTlsMode::Required => Self::Require,
            MySqlTlsMode::VerifyCa => Self::VerifyCa,
            MySqlTlsMode::VerifyIdentity => Self::VerifyFull,
        }
    }
}

/// The plugin-specific keys of a `[roles.NAME]` table whose connection is a
/// MySQL/MariaDB one, as written. [`MySqlRole`] is the validated form.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MySqlRoleOptions {
    /// Statements that create the user, run in order (MySQL commits DDL
    /// at once: there is no enclosing transaction). Required; Vault
    /// placeholders: `{{name}}`, `{{username}}`, `{{password}}`,
    /// `{{expiration}}`.
    #[serde(default)]
    pub creation_statements: Vec<String>,
    /// Statements that remove the user, run in order. Default: lock the
    /// account, kill its connections, `DROP USER IF EXISTS` for every host
    /// the user exists with.
    #[serde(default)]
    pub revocation_statements: Option<Vec<String>>,
    /// Statements run when a lease is renewed. Default: none (MySQL has no
    /// account expiry; lessor revokes the user when the lease ends).
    #[serde(default)]
    pub renew_statements: Option<Vec<String>>,
    /// Statements run after a creation statement failed part-way, to undo
    /// what the earlier ones did. Default: drop the user for every host it
    /// exists with.
    #[serde(default)]
    pub rollback_statements: Option<Vec<String>>,
}

/// A role's validated settings: what `check_role` hands the broker, and the
/// broker hands back on every call.
#[derive(Debug, Clone)]
pub struct MySqlRole {
    pub(crate) creation: Vec<Template>,
    pub(crate) revocation: Option<Vec<Template>>,
    pub(crate) renew: Option<Vec<Template>>,
    pub(crate) rollback: Option<Vec<Template>>,
}

impl MySqlRole {
    /// Validates a role table's plugin keys for a connection whose
    /// passwords are sent as `encoding`; `role` names it in errors.
    pub fn parse_for(
        role: &str,
        options: &toml::Table,
        encoding: MySqlPasswordEncoding,
    ) -> Result<Self, ConfigError> {
        let parsed = Self::parse(role, options)?;
        for (i, template) in parsed.creation.iter().enumerate() {
            check_password_form(template.source(), encoding).map_err(|message| {
                ConfigError::new(
                    format!("roles.{role}.creation_statements"),
                    format!("statement {}: {message}", i + 1),
                )
            })?;
        }
        Ok(parsed)
    }

    /// Validates a role table's plugin keys; `role` names it in errors.
    pub fn parse(role: &str, options: &toml::Table) -> Result<Self, ConfigError> {
        let prefix = format!("roles.{role}");
        let raw: MySqlRoleOptions = parse_table(options, &prefix)?;
        let key = |field: &str| format!("{prefix}.{field}");
        let creation = required_statements(
            &key("creation_statements"),
            &raw.creation_statements,
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
            "user",
        )?;
        let optional = |field: &str, list: &Option<Vec<String>>| {
            optional_statements(&key(field), list.as_deref(), "user")
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
        Ok(role)
    }
}

/// A hash where the server expects a password (or the reverse) would make
/// every issued password wrong, so the form around `{{password}}` must
/// match the encoding: `… PASSWORD '{{password}}'` or `… AS
/// '{{password}}'` for a hash, anything else for the password itself.
fn check_password_form(source: &str, encoding: MySqlPasswordEncoding) -> Result<(), String> {
    let mut rest = source;
    let mut offset = 0;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else { break };
        let inner = rest[start + 2..start + len].trim();
        if inner == "password" {
            let before =
                source[..offset + start].trim_end_matches(['\'', '"']).trim_end().to_ascii_uppercase();
            let takes_hash = before.ends_with("PASSWORD") || before.ends_with(" AS");
            match (encoding, takes_hash) {
                (MySqlPasswordEncoding::MysqlNativePassword, false) => {
                    return Err(
                        "with password_encoding = \"mysql_native_password\", {{password}} is a hash: write \
                                IDENTIFIED BY PASSWORD '{{password}}' (MariaDB) or IDENTIFIED WITH \
                                mysql_native_password AS '{{password}}' (MySQL)"
                            .into(),
                    )
                }
                (MySqlPasswordEncoding::Plaintext, true) => {
                    return Err("{{password}} is the password itself, but this form takes a hash: write \
                                IDENTIFIED BY '{{password}}', or set the connection's password_encoding = \
                                \"mysql_native_password\""
                        .into())
                }
                _ => {}
            }
        }
        offset += start + len + 2;
        rest = &rest[start + len + 2..];
    }
    Ok(())
}

/// The `mysql_native_password` hash of `password`: `*` and the upper-case
/// hex of SHA1(SHA1(password)), as `PASSWORD()` computes it.
pub(crate) fn native_password_hash(password: &str) -> String {
    use sha1::{Digest, Sha1};
    let stage2 = Sha1::digest(Sha1::digest(password.as_bytes()));
    let mut out = String::with_capacity(41);
    out.push('*');
    for byte in stage2 {
        out.push_str(&format!("{byte:02X}"));
    }
    out
}

/// Where the admin connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Address {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix socket (`?socket=/run/mysqld/mysqld.sock`).
    Socket(String),
}

/// A connection's validated settings. Holds the admin password, hence the
/// hand-written `Debug`.
#[derive(Clone)]
pub(crate) struct ConnectionSettings {
    pub(crate) name: String,
    pub(crate) address: Address,
    pub(crate) user: String,
    pub(crate) password: Option<SecretString>,
    /// The URL's database, if any (the admin needs none).
    pub(crate) database: Option<String>,
    pub(crate) options: MySqlConnectionOptions,
    pub(crate) tls: TlsSettings,
    pub(crate) max_connections: usize,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("name", &self.name)
            .field("target", &self.target())
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
        let options: MySqlConnectionOptions = parse_table(options, &prefix)?;
        if !(1..=LONGEST_USERNAME_LEN).contains(&options.max_username_length) {
            return Err(ConfigError::new(
                key("max_username_length"),
                format!(
                    "{} is out of range: MySQL allows 32 (16 before 5.7.8), MariaDB up to {LONGEST_USERNAME_LEN}",
                    options.max_username_length
                ),
            ));
        }
        let url = url.ok_or_else(|| {
            ConfigError::new(key("url"), "required, e.g. \"mysql://lessor_admin@db.internal:3306/\"")
        })?;
        let parsed = parse_url(url).map_err(|message| ConfigError::new(key("url"), message))?;
        if max_connections == 0 {
            return Err(ConfigError::new(key("max_connections"), "must be at least 1"));
        }
        let files = TlsFiles {
            ca_file: options.tls_ca_file.clone(),
            client_cert_file: options.tls_client_cert_file.clone(),
            client_key_file: options.tls_client_key_file.clone(),
        };
        let host = match &parsed.address {
            Address::Tcp { host, .. } => host.as_str(),
            Address::Socket(_) => "localhost",
        };
        // On this machine, MySQL drivers' (and Vault's) default: no TLS.
        let tls = TlsSettings::resolve(options.tls_mode.map(TlsMode::from), files, host, TlsMode::Disable);
        tls.check(&prefix, "tls_mode")?;
        if matches!(parsed.address, Address::Socket(_)) && tls.mode > TlsMode::Disable {
            return Err(ConfigError::new(
                key("tls_mode"),
                "a Unix socket connection never uses TLS; remove the tls_* keys or connect over TCP",
            ));
        }
        Ok(Self {
            name: name.to_string(),
            address: parsed.address,
            user: parsed.user,
            password: password.cloned(),
            database: parsed.database,
            options,
            tls,
            max_connections,
        })
    }

    /// `user@host:port`, for logs and `Debug`: never the password.
    pub(crate) fn target(&self) -> String {
        match &self.address {
            Address::Tcp { host, port } => format!("{}@{host}:{port}", self.user),
            Address::Socket(path) => format!("{}@unix:{path}", self.user),
        }
    }

    /// The admin password, for the pool's options.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.expose_secret())
    }
}

/// What a `mysql://` URL says.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    address: Address,
    user: String,
    database: Option<String>,
}

/// Parses `mysql://USER@HOST[:PORT][/DATABASE][?socket=PATH]`.
///
/// Written out rather than handed to the driver: the driver accepts pool
/// and TLS parameters that would contradict the connection's own keys, and
/// its errors may quote the URL, which could hold a password. Messages here
/// never quote the URL.
fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let rest = url.strip_prefix("mysql://").or_else(|| url.strip_prefix("mariadb://")).ok_or(
        "not a MySQL URL: it must start with mysql:// (e.g. mysql://lessor_admin@db.internal:3306/)",
    )?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) =
        authority.rsplit_once('@').ok_or("the URL names no user, e.g. mysql://lessor_admin@host:3306/")?;
    if userinfo.contains(':') {
        return Err("the URL contains a password; remove it and use password_file or password_env".into());
    }
    let user = percent_decode(userinfo).ok_or("the URL's user is not valid percent-encoded UTF-8")?;
    if user.is_empty() {
        return Err("the URL names no user, e.g. mysql://lessor_admin@host:3306/".into());
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let database = match path.trim_start_matches('/') {
        "" => None,
        db if db.contains('/') => return Err("the URL's path must be at most one database name".into()),
        db => Some(percent_decode(db).ok_or("the URL's database is not valid percent-encoded UTF-8")?),
    };
    let mut socket = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "socket" || value.is_empty() {
            // The name only: a value could be anything, a password included.
            return Err(format!(
                "unknown URL parameter {name:?} (only `socket=PATH` is read; the pool size is max_connections)"
            ));
        }
        socket = Some(percent_decode(value).ok_or("the socket path is not valid percent-encoded UTF-8")?);
    }
    let address = match socket {
        Some(path) => Address::Socket(path),
        None => {
            let (host, port) = split_host_port(hostport)?;
            Address::Tcp { host, port }
        }
    };
    Ok(ParsedUrl { address, user, database })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let bad_port = || "the URL's port is not a number between 1 and 65535".to_string();
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("the URL's IPv6 address lacks its closing `]`")?;
        match after {
            "" => (host.to_string(), None),
            p => (host.to_string(), Some(p.strip_prefix(':').ok_or_else(bad_port)?)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad_port)?,
    };
    Ok((host, port))
}

/// Decodes `%XX` escapes; `None` when they do not make UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
