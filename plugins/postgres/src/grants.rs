//! Direct grants on objects, and the ACL size limit they run into.
//!
//! PostgreSQL keeps an object's privileges in one array in its catalog row,
//! and the row must fit a page: at about 2 400 direct grants on one table,
//! the next `GRANT … ON t TO "v_…"` fails with SQLSTATE 54000 "row is too
//! big". Roles that grant on objects to every dynamic user hit it once that
//! many leases are live. The fix is the group-role pattern: grant once to a
//! NOLOGIN role and make each user a member (`GRANT app_readers TO "{{name}}"`),
//! which costs a row in `pg_auth_members`, not a place in the ACL. So
//! `config check` warns about direct grants, and the failure names the
//! object and the pattern.

use lessor_plugin::failure::Context;
use lessor_plugin::redact::Redactor;
use lessor_plugin::template::Template;
use lessor_plugin::PluginError;
use tokio_postgres::error::SqlState;

/// How to avoid the limit, for messages.
const GROUP_ROLE_PATTERN: &str = "grant the privileges once to a NOLOGIN group role \
     (CREATE ROLE app_readers NOLOGIN; GRANT SELECT ON … TO app_readers) and make each user a member \
     in creation_statements (GRANT app_readers TO \"{{name}}\", or CREATE ROLE … IN ROLE app_readers)";

/// The objects a statement grants privileges on (`GRANT privileges ON
/// object TO …`), one per `GRANT … ON` in it; membership grants
/// (`GRANT role TO …`) are not listed. A lexical look, for messages and
/// warnings: a `;` or `ON` inside a quoted name may mislead it.
pub(crate) fn granted_objects(statement: &str) -> Vec<String> {
    let mut objects = Vec::new();
    for part in statement.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        if !words.first().is_some_and(|w| w.eq_ignore_ascii_case("GRANT")) {
            continue;
        }
        let Some(on) = words.iter().position(|w| w.eq_ignore_ascii_case("ON")) else { continue };
        let to =
            words[on..].iter().position(|w| w.eq_ignore_ascii_case("TO")).map_or(words.len(), |i| on + i);
        if to > on + 1 {
            objects.push(words[on + 1..to].join(" "));
        }
    }
    objects
}

/// One warning per creation statement that grants on objects directly.
pub(crate) fn direct_grant_warnings(role: &str, creation: &[Template]) -> Vec<String> {
    let total = creation.len();
    creation
        .iter()
        .enumerate()
        .filter_map(|(i, template)| {
            let objects = granted_objects(template.source());
            (!objects.is_empty()).then(|| {
                format!(
                    "roles.{role}.creation_statements: statement {} of {total} grants on {} to each user directly; \
                     PostgreSQL holds about 2 400 direct grants per object, after which issuance fails \
                     (SQLSTATE 54000, row is too big): {GROUP_ROLE_PATTERN}",
                    i + 1,
                    objects.join(", ")
                )
            })
        })
        .collect()
}

/// The failure of a creation statement whose GRANT found the object's ACL
/// full, naming the object and the fix; `None` for any other failure.
pub(crate) fn acl_full(
    code: &SqlState,
    message: &str,
    statement: &Template,
    cx: &Context<'_>,
    redactor: &Redactor,
) -> Option<PluginError> {
    if *code != SqlState::PROGRAM_LIMIT_EXCEEDED || !message.contains("row is too big") {
        return None;
    }
    let objects = granted_objects(statement.source());
    if objects.is_empty() {
        return None;
    }
    let text = format!(
        "{}: the ACL of {} is full (SQLSTATE 54000: {message}); PostgreSQL holds about 2 400 direct grants \
         per object: {GROUP_ROLE_PATTERN}",
        cx.prefix(),
        objects.join(", ")
    );
    Some(PluginError::Rejected { message: redactor.scrub(&text) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lessor_plugin::failure::Operation;

    #[test]
    fn finds_the_objects_of_direct_grants_only() {
        assert_eq!(granted_objects("GRANT SELECT ON orders TO \"{{name}}\""), ["orders"]);
        assert_eq!(
            granted_objects("grant select, insert on table public.orders to \"{{name}}\""),
            ["table public.orders"]
        );
        assert_eq!(
            granted_objects("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\""),
            ["ALL TABLES IN SCHEMA public"]
        );
        assert_eq!(
            granted_objects("GRANT USAGE ON SCHEMA app TO \"{{name}}\"; GRANT SELECT (id, total)\n ON orders TO \"{{name}}\""),
            ["SCHEMA app", "orders"]
        );
        assert!(granted_objects("GRANT app_read TO \"{{name}}\"").is_empty());
        assert!(granted_objects("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'").is_empty());
        assert!(granted_objects("REVOKE SELECT ON orders FROM \"{{name}}\"").is_empty());
    }

    #[test]
    fn warns_about_each_statement_that_grants_on_objects() {
        let creation: Vec<Template> = [
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'",
            "GRANT app_read TO \"{{name}}\"",
            "GRANT SELECT ON orders TO \"{{name}}\"",
        ]
        .iter()
        .map(|s| Template::parse(s).unwrap())
        .collect();
        let warnings = direct_grant_warnings("app_ro", &creation);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let w = &warnings[0];
        assert!(w.starts_with("roles.app_ro.creation_statements: statement 3 of 3 grants on orders"), "{w}");
        assert!(w.contains("GRANT app_readers TO \"{{name}}\""), "{w}");
        assert!(direct_grant_warnings("app_ro", &creation[..2]).is_empty());
    }

    #[test]
    fn a_full_acl_names_the_object_and_the_group_role_pattern() {
        let cx = Context::new(Operation::Create, Some("v_app_abc")).step("creation statement 2 of 2", true);
        let grant = Template::parse("GRANT SELECT ON acl_full TO \"{{name}}\"").unwrap();
        let full = "row is too big: size 8168, maximum size 8160";
        let e = acl_full(&SqlState::PROGRAM_LIMIT_EXCEEDED, full, &grant, &cx, &Redactor::default()).unwrap();
        let m = e.to_string();
        assert!(matches!(e, PluginError::Rejected { .. }), "{m}");
        assert!(
            m.contains("create v_app_abc (creation statement 2 of 2): the ACL of acl_full is full"),
            "{m}"
        );
        assert!(m.contains("SQLSTATE 54000") && m.contains("GRANT app_readers TO \"{{name}}\""), "{m}");

        let create = Template::parse("CREATE ROLE \"{{name}}\"").unwrap();
        assert!(
            acl_full(&SqlState::PROGRAM_LIMIT_EXCEEDED, full, &create, &cx, &Redactor::default()).is_none()
        );
        assert!(acl_full(&SqlState::SYNTAX_ERROR, full, &grant, &cx, &Redactor::default()).is_none());
    }
}
