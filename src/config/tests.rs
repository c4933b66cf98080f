use super::*;

/// A small valid config, also the base of `crate::daemon`'s tests.
pub(crate) const EXAMPLE: &str = r#"
[server]
socket = "/tmp/lessor-test.sock"
store = "sqlite:///tmp/lessor-test.db"

[connections.pg_main]
plugin = "postgres"
url = "postgres://lessor_admin@127.0.0.1:5432/app"
max_connections = 4
revocation_workers = 2

[roles.app_ro]
connection = "pg_main"
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' IN ROLE app_readers",
]
"#;

fn errors_of(text: &str) -> String {
    parse(text, "test.toml").and_then(Checked::into_result).unwrap_err().to_string()
}

#[test]
fn example_is_checked_into_plain_data() {
    let config = parse(EXAMPLE, "test.toml").and_then(Checked::into_result).unwrap();
    let role = &config.roles["app_ro"];
    assert_eq!(role.default_ttl.as_secs(), 3600);
    assert_eq!(config.socket_mode, 0o660);
    assert!(role.options.contains_key("creation_statements"), "plugin keys are kept for the plugin");
}

#[test]
fn errors_name_file_and_key() {
    let e = errors_of(&EXAMPLE.replace("connection = \"pg_main\"", "connection = \"nope\""));
    assert!(e.contains("test.toml: roles.app_ro.connection: unknown connection \"nope\""), "{e}");

    let e = errors_of(&EXAMPLE.replace("default_ttl = \"1h\"", "default_ttl = \"48h\""));
    assert!(e.contains("roles.app_ro.default_ttl: 2d is longer than max_ttl 1d"), "{e}");

    let e = errors_of(&EXAMPLE.replace("default_ttl = \"1h\"", "default_ttl = \"abc\""));
    assert!(e.contains("invalid duration \"abc\""), "{e}");

    let e = errors_of(&EXAMPLE.replace("[server]", "[server]\nsokcet = 1"));
    assert!(e.contains("unknown field `sokcet`"), "{e}");

    let e = errors_of(&EXAMPLE.replace("[roles.app_ro]", "[roles.\"app'ro\"]"));
    assert!(e.contains("roles.app'ro: name may hold only"), "{e}");
}

#[test]
fn an_error_is_at_its_key_or_below() {
    let checked = parse(&EXAMPLE.replace("default_ttl = \"1h\"", "default_ttl = \"48h\""), "t").unwrap();
    assert!(checked.has_error_at("roles.app_ro"));
    assert!(checked.has_error_at("roles.app_ro.default_ttl"));
    assert!(!checked.has_error_at("roles.app"));
    assert!(!checked.has_error_at("connections.pg_main"));
}

#[test]
fn committed_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/config.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != json_schema() {
        if std::env::var_os("LESSOR_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, json_schema()).unwrap();
        } else {
            panic!(
                "{} is out of date; regenerate with LESSOR_UPDATE_SCHEMA=1 cargo test -p lessor --lib committed_schema",
                path.display()
            );
        }
    }
}

#[test]
fn credentials_entries_name_a_known_role_or_account_and_their_units() {
    let good = format!(
        "{EXAMPLE}\n[credentials.\"db.env\"]\nrole = \"app_ro\"\nunits = [\"billing-*.service\"]\nttl = \"2h\"\n"
    );
    let config = parse(&good, "test.toml").and_then(Checked::into_result).unwrap();
    assert_eq!(config.credentials["db.env"].format, CredentialFormat::Env);
    let bad = format!(
        "{EXAMPLE}\n[credentials.\".hidden\"]\nrole = \"nope\"\nunits = []\n\n\
         [credentials.both]\nrole = \"app_ro\"\nstatic = \"x\"\nunits = [\"a.service\"]\n\n\
         [credentials.long]\nrole = \"app_ro\"\nttl = \"48h\"\nunits = [\"a.service\"]\n"
    );
    let errors = errors_of(&bad);
    for expected in [
        "credentials.\".hidden\": a credential id may hold only",
        "credentials.\".hidden\".role: unknown role \"nope\"",
        "credentials.\".hidden\".units: name the units",
        "credentials.\"both\": give exactly one of `role`",
        "credentials.\"long\".ttl: 2d must be longer than 0s and at most role \"app_ro\"'s max_ttl 1d",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
    }
}
