//! The plugin's keys of `[connections.NAME]` and `[roles.NAME]`, checked
//! at load: a connection that would send the admin's bind in clear over a
//! network, an AD connection without TLS, or an LDIF that does not parse
//! never gets as far as the first issuance.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use lessor_plugin::options::parse_table;
use lessor_plugin::tls::{is_local_host, TlsFiles, TlsMode, TlsSettings};
use lessor_plugin::ConfigError;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::ldif::{check_dn, is_attribute, Ldif, Purpose, Secrets};
use crate::password::{unicode_pwd, PasswordHash, Schema};
use crate::template::Values;

/// `[connections.NAME]` keys of the LDAP plugin, beside the broker's:
/// `url = "ldaps://ldap.example.com"` (or `ldap://…` with `starttls =
/// true`; plain `ldap://` only to a loopback host), the bind DN's password
/// in `password_file` or `password_env`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapConnectionOptions {
    /// The DN lessor binds as, e.g. `"cn=lessor,ou=services,dc=example,dc=com"`.
    /// It needs write access under `userdn` (and to the groups of `groups`).
    pub bind_dn: Option<String>,
    /// `"openldap"` (default) or `"ad"` (Active Directory: passwords are
    /// written to `unicodePwd`, and TLS is required).
    #[serde(default)]
    pub schema: Schema,
    /// The base DN users live under: static accounts are searched for
    /// there, and tidy lists the entries one level below it.
    pub userdn: Option<String>,
    /// The attribute holding a user's name: `cn` by default for
    /// OpenLDAP, `sAMAccountName` for AD.
    pub userattr: Option<String>,
    /// Where groups live: when an entry is revoked without its role (the
    /// role was removed, or tidy found it), its `member` values are
    /// searched for under this DN and removed. Without it, only the groups
    /// recorded at issuance are cleaned.
    pub groupdn: Option<String>,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    #[serde(default)]
    pub starttls: bool,
    /// (OpenLDAP) How `userPassword` is hashed before it is sent:
    /// `"ssha512"` (default; slapd's pw-sha2 module) or `"argon2"` (its
    /// argon2 module).
    pub password_hash: Option<PasswordHash>,
    /// (TLS) PEM CA certificates the server's certificate must chain to;
    /// the system's roots when absent. The host name is always checked.
    pub tls_ca_file: Option<PathBuf>,
    /// (TLS) A PEM client certificate, for servers that ask for one.
    pub tls_client_cert_file: Option<PathBuf>,
    /// (TLS) Its key (mode 0600 or stricter).
    pub tls_client_key_file: Option<PathBuf>,
}

/// A connection's checked settings.
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    /// `ldaps://`, or StartTLS on `ldap://`: the rustls config to use.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub starttls: bool,
    pub bind_dn: String,
    pub schema: Schema,
    pub userdn: String,
    pub userattr: String,
    pub groupdn: Option<String>,
    pub password_hash: PasswordHash,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("starttls", &self.starttls)
            .field("bind_dn", &self.bind_dn)
            .field("schema", &self.schema)
            .field("userdn", &self.userdn)
            .field("userattr", &self.userattr)
            .finish_non_exhaustive()
    }
}

pub fn parse_connection(
    name: &str,
    url: Option<&str>,
    options: &toml::Table,
) -> Result<Connection, ConfigError> {
    let prefix = format!("connections.{name}");
    let key = |field: &str| format!("{prefix}.{field}");
    if options.contains_key("bindpass") {
        // Vault's name for it.
        return Err(ConfigError::new(
            key("bindpass"),
            "the bind DN's password belongs in password_file or password_env, never in the config",
        ));
    }
    let raw: LdapConnectionOptions = parse_table(options, &prefix)?;
    let url =
        url.ok_or_else(|| ConfigError::new(key("url"), "required, e.g. \"ldaps://ldap.example.com\""))?;
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::new(key("url"), format!("not a URL: {e}")))?;
    let ldaps = match parsed.scheme() {
        "ldaps" => true,
        "ldap" => false,
        other => {
            return Err(ConfigError::new(key("url"), format!("scheme {other}:// is not ldap:// or ldaps://")))
        }
    };
    if parsed.password().is_some() || !parsed.username().is_empty() {
        return Err(ConfigError::new(
            key("url"),
            "the URL holds a user or password; set bind_dn, and the password in password_file or password_env",
        ));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(
            key("url"),
            "a server address only (no DN, scope or filter in the URL); set userdn instead",
        ));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    if host.is_empty() {
        return Err(ConfigError::new(key("url"), "names no host"));
    }
    if ldaps && raw.starttls {
        return Err(ConfigError::new(
            key("starttls"),
            "an ldaps:// connection is TLS already; remove starttls",
        ));
    }
    let tls = ldaps || raw.starttls;
    let files = TlsFiles {
        ca_file: raw.tls_ca_file.clone(),
        client_cert_file: raw.tls_client_cert_file.clone(),
        client_key_file: raw.tls_client_key_file.clone(),
    };
    if !tls {
        if raw.schema == Schema::Ad {
            return Err(ConfigError::new(
                key("url"),
                "schema = \"ad\" needs TLS (AD sets passwords over encrypted connections only): use ldaps:// or starttls = true",
            ));
        }
        if !is_local_host(&host) {
            return Err(ConfigError::new(
                key("url"),
                format!(
                    "plain ldap:// to {host}, which is not loopback, would send the bind password and every new password in clear: use ldaps:// or starttls = true"
                ),
            ));
        }
        if files != TlsFiles::default() {
            return Err(ConfigError::new(
                key("tls_ca_file"),
                "TLS files need an ldaps:// URL or starttls = true; this connection is plaintext",
            ));
        }
    }
    let client_config = if tls {
        // The SDK's checks and config, as for the other plugins: readable
        // files, a private key, a certificate and its key together, the
        // chain and the host name verified.
        let settings =
            TlsSettings { mode: TlsMode::VerifyFull, files, explicit: true, local: is_local_host(&host) };
        settings.check(&prefix, "url")?;
        let config = settings
            .client_config()
            .map_err(|e| ConfigError::new(key("tls_ca_file"), e))?
            .expect("verify-full has TLS");
        Some(Arc::new(config))
    } else {
        None
    };
    let required = |value: Option<String>, field: &str, example: &str| {
        let value =
            value.ok_or_else(|| ConfigError::new(key(field), format!("required, e.g. {example:?}")))?;
        check_dn(&value).map_err(|e| ConfigError::new(key(field), format!("{value:?} {e}")))?;
        Ok::<_, ConfigError>(value)
    };
    let bind_dn = required(raw.bind_dn, "bind_dn", "cn=lessor,ou=services,dc=example,dc=com")?;
    let userdn = required(raw.userdn, "userdn", "ou=people,dc=example,dc=com")?;
    if let Some(groupdn) = &raw.groupdn {
        check_dn(groupdn).map_err(|e| ConfigError::new(key("groupdn"), format!("{groupdn:?} {e}")))?;
    }
    let userattr = raw.userattr.unwrap_or_else(|| match raw.schema {
        Schema::OpenLdap => "cn".into(),
        Schema::Ad => "sAMAccountName".into(),
    });
    if !is_attribute(&userattr) {
        return Err(ConfigError::new(key("userattr"), format!("{userattr:?} is not an attribute name")));
    }
    if raw.schema == Schema::Ad && raw.password_hash.is_some() {
        return Err(ConfigError::new(
            key("password_hash"),
            "AD hashes passwords itself (unicodePwd); password_hash is for OpenLDAP",
        ));
    }
    Ok(Connection {
        url: url.to_string(),
        tls: client_config,
        starttls: raw.starttls,
        bind_dn,
        schema: raw.schema,
        userdn,
        userattr,
        groupdn: raw.groupdn,
        password_hash: raw.password_hash.unwrap_or_default(),
    })
}

/// `[roles.NAME]` keys of the LDAP plugin: LDIF templates as Vault's LDAP
/// secrets engine takes them (`{{.Username}}`, `{{.Password}}`, … or
/// lessor's `{{name}}`, `{{password}}`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LdapRoleOptions {
    /// LDIF run to create the user; its first added entry is the user's,
    /// whose DN the credential carries. `userPassword: {{.Password}}` is
    /// written as the connection's `password_hash` (OpenLDAP);
    /// `unicodePwd: {{.Password}}` as the quoted UTF-16LE password (AD).
    pub creation_ldif: Option<String>,
    /// LDIF run to revoke the user, e.g. `dn: cn={{.Username}},ou=people,…`
    /// then `changetype: delete`. An entry already gone counts as deleted.
    pub deletion_ldif: Option<String>,
    /// LDIF run when creation fails half-way; `deletion_ldif` when absent.
    pub rollback_ldif: Option<String>,
    /// DNs of groups (`groupOfNames`) the user's entry is added to as a
    /// `member` after creation, and removed from when revoked.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A role's checked settings.
#[derive(Debug, Clone)]
pub struct LdapRole {
    pub creation: Ldif,
    pub deletion: Ldif,
    pub rollback: Option<Ldif>,
    pub groups: Vec<String>,
}

pub fn parse_role(role: &str, options: &toml::Table, schema: Schema) -> Result<LdapRole, ConfigError> {
    let prefix = format!("roles.{role}");
    let raw: LdapRoleOptions = parse_table(options, &prefix)?;
    let ldif =
        |field: &str, source: Option<&String>, purpose: Purpose| -> Result<Option<Ldif>, ConfigError> {
            let Some(source) = source else { return Ok(None) };
            let key = format!("{prefix}.{field}");
            let parsed = Ldif::parse(source, schema, purpose).map_err(|e| ConfigError::new(&key, e))?;
            // A dry run with sample values: every DN must come out as a DN and
            // every `::` value as base64.
            let now = Utc::now();
            let values = Values {
                username: "v_sample_user",
                password: (purpose == Purpose::Creation).then_some("Sample-Password-0"),
                role,
                issued_at: now,
                expires_at: now,
            };
            let unicode = unicode_pwd("Sample-Password-0");
            let secrets = Secrets { hashed: Some("{SSHA512}sample"), unicode_pwd: Some(&unicode) };
            parsed.render(&values, &secrets).map_err(|e| ConfigError::new(&key, e))?;
            Ok(Some(parsed))
        };
    let example = "\"dn: cn={{.Username}},ou=people,dc=example,dc=com\\nobjectClass: inetOrgPerson\\ncn: {{.Username}}\\nsn: {{.Username}}\\nuserPassword: {{.Password}}\\n\"";
    let creation =
        ldif("creation_ldif", raw.creation_ldif.as_ref(), Purpose::Creation)?.ok_or_else(|| {
            ConfigError::new(format!("{prefix}.creation_ldif"), format!("required, e.g. {example}"))
        })?;
    let deletion =
        ldif("deletion_ldif", raw.deletion_ldif.as_ref(), Purpose::Deletion)?.ok_or_else(|| {
            ConfigError::new(
                format!("{prefix}.deletion_ldif"),
                "required, e.g. \"dn: cn={{.Username}},ou=people,dc=example,dc=com\\nchangetype: delete\\n\"",
            )
        })?;
    let rollback = ldif("rollback_ldif", raw.rollback_ldif.as_ref(), Purpose::Rollback)?;
    for (i, group) in raw.groups.iter().enumerate() {
        check_dn(group)
            .map_err(|e| ConfigError::new(format!("{prefix}.groups[{i}]"), format!("{group:?} {e}")))?;
    }
    Ok(LdapRole { creation, deletion, rollback, groups: raw.groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(url: &str, options: &str) -> Result<Connection, ConfigError> {
        parse_connection("dir", Some(url), &options.parse().unwrap())
    }

    const BASE: &str = "bind_dn = \"cn=lessor,dc=x\"\nuserdn = \"ou=people,dc=x\"\n";

    #[test]
    fn connections_are_checked_and_errors_name_the_key() {
        let ok = connection("ldap://127.0.0.1:3890", BASE).unwrap();
        assert_eq!((ok.userattr.as_str(), ok.schema, ok.tls.is_none()), ("cn", Schema::OpenLdap, true));
        assert_eq!(ok.password_hash, PasswordHash::Ssha512);
        let ad = connection("ldaps://dc.corp.example", &format!("{BASE}schema = \"ad\"")).unwrap();
        assert_eq!(ad.userattr, "sAMAccountName");
        assert!(ad.tls.is_some());
        assert!(connection("ldap://dc.corp.example", &format!("{BASE}starttls = true"))
            .unwrap()
            .tls
            .is_some());
        for (url, options, key, wanted) in [
            ("ldap://ldap.example.com", BASE.to_string(), "connections.dir.url", "not loopback"),
            ("ldap://localhost", format!("{BASE}schema = \"ad\""), "connections.dir.url", "needs TLS"),
            ("ldap://127.0.0.1", format!("{BASE}schema = \"AD\""), "connections.dir.schema", ""),
            ("ldaps://h", format!("{BASE}starttls = true"), "connections.dir.starttls", "TLS already"),
            (
                "ldap://127.0.0.1",
                format!("{BASE}tls_ca_file = \"/x\""),
                "connections.dir.tls_ca_file",
                "plaintext",
            ),
            (
                "ldaps://h",
                format!("{BASE}tls_ca_file = \"/nonexistent/ca.pem\""),
                "connections.dir.tls_ca_file",
                "cannot read",
            ),
            ("ldaps://lessor:pw@h", BASE.to_string(), "connections.dir.url", "password_file"),
            ("ldaps://h/dc=x", BASE.to_string(), "connections.dir.url", "set userdn"),
            ("http://h", BASE.to_string(), "connections.dir.url", "not ldap://"),
            ("ldaps://h", "userdn = \"ou=p,dc=x\"".to_string(), "connections.dir.bind_dn", "required"),
            ("ldaps://h", "bind_dn = \"cn=l,dc=x\"".to_string(), "connections.dir.userdn", "required"),
            ("ldaps://h", format!("{BASE}groupdn = \"groups\""), "connections.dir.groupdn", "not type=value"),
            (
                "ldaps://h",
                format!("{BASE}userattr = \"a b\""),
                "connections.dir.userattr",
                "not an attribute",
            ),
            (
                "ldaps://h",
                format!("{BASE}schema = \"ad\"\npassword_hash = \"argon2\""),
                "connections.dir.password_hash",
                "OpenLDAP",
            ),
            ("ldaps://h", format!("{BASE}password_hash = \"md5\""), "connections.dir.password_hash", ""),
            ("ldaps://h", format!("{BASE}bindpass = \"x\""), "connections.dir.bindpass", "password_file"),
        ] {
            let e = connection(url, &options).unwrap_err();
            assert_eq!(e.key, key, "{url} {options}: {e}");
            assert!(e.message.contains(wanted), "{url} {options}: {e}");
        }
    }

    fn role(text: &str) -> Result<LdapRole, ConfigError> {
        parse_role("app", &text.parse().unwrap(), Schema::OpenLdap)
    }

    #[test]
    fn roles_parse_their_ldif_and_errors_name_the_key() {
        let good = r#"
creation_ldif = """
dn: cn={{.Username}},ou=people,dc=x
objectClass: inetOrgPerson
cn: {{.Username}}
sn: {{.Username}}
userPassword: {{.Password}}
"""
deletion_ldif = """
dn: cn={{.Username}},ou=people,dc=x
changetype: delete
"""
groups = ["cn=readers,ou=groups,dc=x"]
"#;
        let parsed = role(good).unwrap();
        assert!(parsed.creation.needs_hash() && parsed.rollback.is_none());
        assert_eq!(parsed.groups, ["cn=readers,ou=groups,dc=x"]);
        for (text, key, wanted) in [
            (
                good.replace(
                    "dn: cn={{.Username}},ou=people,dc=x\nchangetype",
                    "dn: {{.Username}}\nchangetype",
                ),
                "roles.app.deletion_ldif",
                "not type=value",
            ),
            (
                good.replace("changetype: delete", "changetype: purge"),
                "roles.app.deletion_ldif",
                "unknown changetype",
            ),
            (
                good.replace("userPassword: {{.Password}}", "userPassword: {{.Pasword}}"),
                "roles.app.creation_ldif",
                "line 5",
            ),
            (good.replace("readers,ou", "readers;;ou"), "roles.app.groups[0]", ""),
            (good.replace("deletion_ldif", "revocation_ldif"), "roles.app.revocation_ldif", "unknown field"),
            (
                good.replace("deletion_ldif = \"\"\"", "rollback_ldif = \"\"\""),
                "roles.app.deletion_ldif",
                "required",
            ),
        ] {
            let e = role(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(wanted), "{e}");
        }
        let e = role("deletion_ldif = \"dn: cn={{.Username}},dc=x\\nchangetype: delete\\n\"").unwrap_err();
        assert_eq!(e.key, "roles.app.creation_ldif");
    }
}
