//! Which environment variables a credential goes in: the ones the
//! backend's own tools read (`PGUSER`/`PGPASSWORD`, `MYSQL_PWD`,
//! `AWS_SECRET_ACCESS_KEY`, …). One table for everything that writes a
//! credential as variables: `lessor creds --format env`, `lessor exec`, and
//! the daemon's `format = "env"` credentials for systemd's
//! `LoadCredential=`.

use serde_json::Value;

/// The (user, password) variables a database login goes in, the ones the
/// plugin's own clients read; both SQL pairs when the plugin is not known.
pub fn database_vars(plugin: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match plugin {
        Some("postgres") => &[("PGUSER", "PGPASSWORD")],
        Some("mysql") => &[("MYSQL_USER", "MYSQL_PWD")],
        // redis-cli reads REDISCLI_AUTH; the user has no variable of its own.
        Some("redis") => &[("REDIS_USERNAME", "REDISCLI_AUTH")],
        _ => &[("PGUSER", "PGPASSWORD"), ("MYSQL_USER", "MYSQL_PWD")],
    }
}

/// The variables of an issue answer (`POST /v1/creds/{role}` as JSON):
/// `LESSOR_LEASE_ID`, then the backend's own ([`credential_vars`]).
pub fn issued_vars(body: &Value) -> Result<Vec<(&'static str, String)>, String> {
    let credential = body.get("credential").ok_or("the response has no credential")?;
    let plugin = body.get("plugin").and_then(Value::as_str).unwrap_or("");
    let lease_id = body.get("lease_id").and_then(Value::as_str).ok_or("the response has no lease_id")?;
    let mut vars = vec![("LESSOR_LEASE_ID", lease_id.to_string())];
    vars.extend(credential_vars(plugin, credential)?);
    Ok(vars)
}

/// The variables a credential (an issued one's or a static account's, as
/// JSON) goes in for `plugin`'s backend. The error never quotes a value,
/// and a value holding a NUL byte (which no variable can hold) is refused.
pub fn credential_vars(plugin: &str, credential: &Value) -> Result<Vec<(&'static str, String)>, String> {
    let login;
    let vars: &[(&str, &str, bool)] = if credential.get("access_key_id").is_some() || plugin == "aws" {
        &[
            ("AWS_ACCESS_KEY_ID", "access_key_id", true),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key", true),
            ("AWS_SESSION_TOKEN", "session_token", false),
        ]
    } else if credential.get("distinguished_name").is_some() || plugin == "ldap" {
        &[
            ("LDAPBINDDN", "distinguished_name", true),
            ("LDAP_USERNAME", "username", true),
            ("LDAP_PASSWORD", "password", true),
        ]
    } else if matches!(plugin, "postgres" | "mysql" | "redis") {
        // The same variables `lessor exec` sets.
        let (user, password) = database_vars(Some(plugin))[0];
        login = [(user, "username", true), (password, "password", true)];
        &login
    } else if plugin.is_empty() {
        return Err("the response does not say which plugin made the credential".into());
    } else {
        return Err(format!("no environment variables are defined for `{plugin}` credentials"));
    };
    let mut lines = Vec::with_capacity(vars.len());
    for &(var, field, required) in vars {
        match credential.get(field) {
            Some(Value::String(value)) => lines.push((var, value.clone())),
            None | Some(Value::Null) if !required => {}
            None | Some(Value::Null) => return Err(format!("the credential has no `{field}`")),
            Some(_) => return Err(format!("the credential's `{field}` is not a string")),
        }
    }
    if let Some((var, _)) = lines.iter().find(|(_, value)| value.contains('\0')) {
        return Err(format!("the value for {var} contains a NUL byte, which no shell variable can hold"));
    }
    Ok(lines)
}

/// Quotes `value` for POSIX shells (and systemd's `EnvironmentFile=`):
/// inside single quotes nothing is special except `'` itself, which
/// becomes `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
