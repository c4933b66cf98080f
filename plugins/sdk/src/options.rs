//! Reading a plugin's own keys of a `[connections.NAME]` or `[roles.NAME]`
//! table.
//!
//! The broker hands a plugin every key it does not own as a [`toml::Table`].
//! Each plugin deserializes it into a typed struct with
//! `deny_unknown_fields`, and the SQL plugins parse lists of statements
//! into [`Template`]s; doing both here means a typo or an empty list reads
//! the same, `roles.NAME.key: …`, whatever the backend.

use serde::de::DeserializeOwned;

use crate::template::{Placeholder, Template};
use crate::ConfigError;

/// Deserializes a config table into `T` (all of whose fields have defaults)
/// and, on failure, finds the key at fault by trying each key alone, so the
/// error names `prefix.key` rather than the whole table. A refused key that
/// names a password or a secret is told where the secret belongs.
pub fn parse_table<T: DeserializeOwned>(table: &toml::Table, prefix: &str) -> Result<T, ConfigError> {
    let whole = match T::deserialize(toml::Value::Table(table.clone())) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    for (key, value) in table {
        let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(toml::Value::Table(alone)) {
            let mut message = e.message().to_string();
            if key.contains("password") {
                message.push_str(
                    "; the admin password belongs in password_file or password_env, never in the config",
                );
            } else if key.contains("secret") {
                message.push_str(
                    "; the secret access key belongs in password_file or password_env, never in the config",
                );
            }
            return Err(ConfigError::new(format!("{prefix}.{key}"), message));
        }
    }
    Err(ConfigError::new(prefix, whole.message()))
}

/// Parses a required list of statements at `key`: an empty list is refused
/// with `example`, a statement a role would typically start with.
/// `subject` is what the statements act on ("role", "user").
pub fn required_statements(
    key: &str,
    sources: &[String],
    example: &str,
    subject: &str,
) -> Result<Vec<Template>, ConfigError> {
    if sources.is_empty() {
        return Err(ConfigError::new(key, format!("required: at least one statement, e.g. {example}")));
    }
    statements(key, sources, subject)
}

/// Parses an optional list of statements at `key`; `None` means "use the
/// plugin's default", so an empty list (which would silently do nothing)
/// is refused.
pub fn optional_statements(
    key: &str,
    sources: Option<&[String]>,
    subject: &str,
) -> Result<Option<Vec<Template>>, ConfigError> {
    match sources {
        None => Ok(None),
        Some([]) => Err(ConfigError::new(key, "must not be empty; omit it to use the plugin's default")),
        Some(list) => statements(key, list, subject).map(Some),
    }
}

/// Parses a list of statements; a list that never says `{{name}}` cannot
/// act on the lease's `subject` ("role", "user"), so it is refused.
pub fn statements(key: &str, sources: &[String], subject: &str) -> Result<Vec<Template>, ConfigError> {
    let parsed = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if s.trim().is_empty() {
                return Err(ConfigError::new(key, format!("statement {} is empty", i + 1)));
            }
            Template::parse(s).map_err(|e| ConfigError::new(key, format!("statement {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !parsed.iter().any(|t| t.uses(Placeholder::Name)) {
        return Err(ConfigError::new(
            key,
            format!("no statement uses {{{{name}}}} (or {{{{username}}}}), so none would act on the generated {subject}"),
        ));
    }
    Ok(parsed)
}

/// Refuses placeholders a statement list will never have a value for, so
/// they do not silently render empty: `{{password}}` is known only to
/// creation statements, `{{expiration}}` only to creation and renewal.
/// `lists` holds `(dotted key, field, parsed statements)`.
pub fn check_placeholders(lists: &[(&str, &str, Option<&[Template]>)]) -> Result<(), ConfigError> {
    for (key, field, list) in lists {
        let unknown: &[(Placeholder, &str)] = match *field {
            "renew_statements" => {
                &[(Placeholder::Password, "{{password}} is only known to creation_statements")]
            }
            "revocation_statements" | "rollback_statements" => &[
                (Placeholder::Password, "{{password}} is only known to creation_statements"),
                (Placeholder::Expiration, "{{expiration}} is only known to creation and renew statements"),
            ],
            _ => &[],
        };
        for (i, template) in list.iter().flat_map(|l| l.iter()).enumerate() {
            if let Some((_, why)) = unknown.iter().find(|(p, _)| template.uses(*p)) {
                return Err(ConfigError::new(*key, format!("statement {}: {why}", i + 1)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn placeholders_without_a_value_are_refused() {
        let parse = |sql: &str| vec![Template::parse(sql).unwrap()];
        let renew = parse("ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'");
        let revoke = parse("DROP ROLE \"{{name}}\"");
        assert_eq!(
            check_placeholders(&[
                ("roles.r.renew_statements", "renew_statements", Some(&renew)),
                ("roles.r.revocation_statements", "revocation_statements", Some(&revoke)),
                ("roles.r.rollback_statements", "rollback_statements", None),
            ]),
            Ok(())
        );
        let bad = parse("ALTER ROLE \"{{name}}\" PASSWORD '{{password}}'");
        let e =
            check_placeholders(&[("roles.r.renew_statements", "renew_statements", Some(&bad))]).unwrap_err();
        assert_eq!(e.key, "roles.r.renew_statements");
        assert!(e.message.contains("{{password}} is only known to creation_statements"), "{e}");
        let e =
            check_placeholders(&[("roles.r.revocation_statements", "revocation_statements", Some(&renew))])
                .unwrap_err();
        assert!(e.message.contains("statement 1: {{expiration}}"), "{e}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        #[serde(default)]
        #[allow(dead_code)]
        size: u32,
    }

    #[test]
    fn parse_table_names_the_key_at_fault() {
        let table = |src: &str| src.parse::<toml::Table>().unwrap();
        assert!(parse_table::<Options>(&table("size = 3"), "connections.c").is_ok());
        let e = parse_table::<Options>(&table("sise = 3"), "connections.c").unwrap_err();
        assert_eq!(e.key, "connections.c.sise");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse_table::<Options>(&table("password = \"x\""), "connections.c").unwrap_err();
        assert!(e.message.contains("password_file"), "{e}");
    }

    #[test]
    fn statement_lists() {
        let list = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(statements("k", &list(&["DROP {{name}}"]), "user").unwrap().len(), 1);
        let e = statements("k", &list(&["DROP bob"]), "user").unwrap_err();
        assert_eq!(
            e.message,
            "no statement uses {{name}} (or {{username}}), so none would act on the generated user"
        );
        let e = statements("k", &list(&["DROP {{name}}", " "]), "role").unwrap_err();
        assert_eq!(e.message, "statement 2 is empty");
        let e = required_statements("k", &[], "CREATE {{name}}", "role").unwrap_err();
        assert_eq!(e.message, "required: at least one statement, e.g. CREATE {{name}}");
        assert!(optional_statements("k", None, "role").unwrap().is_none());
        let e = optional_statements("k", Some(&[]), "role").unwrap_err();
        assert_eq!(e.message, "must not be empty; omit it to use the plugin's default");
    }
}
