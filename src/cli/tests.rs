use super::*;

use clap::CommandFactory;
use serde_json::json;

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn socket_is_only_set_when_given() {
    // LESSOR_SOCKET may be set in the test environment; only the flag
    // form is checked here.
    let cli = Cli::try_parse_from(["lessor", "--socket", "/tmp/s.sock", "serve", "--dev"]).unwrap();
    assert_eq!(cli.socket, Some(PathBuf::from("/tmp/s.sock")));
    let cli = Cli::try_parse_from(["lessor", "lease", "list", "--socket", "/tmp/t.sock"]).unwrap();
    assert_eq!(cli.socket, Some(PathBuf::from("/tmp/t.sock")));
}

#[test]
fn revoke_takes_an_id_or_a_prefix() {
    assert!(Cli::try_parse_from(["lessor", "lease", "revoke", "app_ro/x"]).is_ok());
    assert!(Cli::try_parse_from(["lessor", "lease", "revoke", "--prefix", "app_ro/", "--force"]).is_ok());
    assert!(Cli::try_parse_from(["lessor", "lease", "revoke"]).is_err());
    assert!(Cli::try_parse_from(["lessor", "lease", "revoke", "app_ro/x", "--prefix", "app_ro/"]).is_err());
    assert!(Cli::try_parse_from(["lessor", "lease", "revoke", "app_ro/x", "--force"]).is_err());
}

#[test]
fn shell_quoting_survives_every_character() {
    assert_eq!(shell_quote("abc"), "'abc'");
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote("$(rm -rf /) `x` \"y\" \\ \n"), "'$(rm -rf /) `x` \"y\" \\ \n'");
}

#[test]
fn shell_quoting_round_trips_through_sh() {
    let nasty = "a'b\"c$d`e\\f\ng'' !*?~";
    let script = format!("export X={}\nprintf %s \"$X\"", shell_quote(nasty));
    let output = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), nasty);
}

fn issued(plugin: &str, credential: Value) -> Value {
    json!({
        "lease_id": "app_ro/AbC", "role": "app_ro", "plugin": plugin, "ttl_seconds": 900,
        "expires_at": "2030-01-01T00:15:00Z", "renewable": true, "credential": credential,
    })
}

#[test]
fn env_for_postgres_mysql_and_aws() {
    let pg = issued("postgres", json!({"username": "v_app_ro_x", "password": "p'w"}));
    assert_eq!(
        env_exports(&pg).unwrap(),
        "export LESSOR_LEASE_ID='app_ro/AbC'\nexport PGUSER='v_app_ro_x'\nexport PGPASSWORD='p'\\''w'\n"
    );
    let my = issued("mysql", json!({"username": "u", "password": "p"}));
    assert_eq!(
        env_exports(&my).unwrap(),
        "export LESSOR_LEASE_ID='app_ro/AbC'\nexport MYSQL_USER='u'\nexport MYSQL_PWD='p'\n"
    );
    let aws =
        issued("aws", json!({"access_key_id": "AKIA", "secret_access_key": "s/+=", "session_token": "t"}));
    assert_eq!(
        env_exports(&aws).unwrap(),
        "export LESSOR_LEASE_ID='app_ro/AbC'\nexport AWS_ACCESS_KEY_ID='AKIA'\n\
         export AWS_SECRET_ACCESS_KEY='s/+='\nexport AWS_SESSION_TOKEN='t'\n"
    );
    let iam_user =
        issued("aws", json!({"access_key_id": "AKIA", "secret_access_key": "s", "session_token": null}));
    assert!(!env_exports(&iam_user).unwrap().contains("AWS_SESSION_TOKEN"));
}

#[test]
fn env_errors_never_quote_the_secret() {
    let missing = issued("postgres", json!({"username": "u"}));
    assert_eq!(env_exports(&missing).unwrap_err(), "the credential has no `password`");
    let odd = issued("mongodb", json!({"username": "u", "password": "hunter2"}));
    let e = env_exports(&odd).unwrap_err();
    assert!(e.contains("mongodb") && !e.contains("hunter2"), "{e}");
    // Redis: what redis-cli reads; LDAP: the bind DN OpenLDAP's tools read.
    let redis = issued("redis", json!({"username": "u", "password": "p"}));
    assert_eq!(
        env_exports(&redis).unwrap(),
        "export LESSOR_LEASE_ID='app_ro/AbC'\nexport REDIS_USERNAME='u'\nexport REDISCLI_AUTH='p'\n"
    );
    let ldap = issued("ldap", json!({"username": "u", "distinguished_name": "cn=u,dc=x", "password": "p"}));
    assert!(env_exports(&ldap).unwrap().contains("export LDAPBINDDN='cn=u,dc=x'\n"));
    let nul = issued("postgres", json!({"username": "u", "password": "a\u{0}hunter2"}));
    assert!(!env_exports(&nul).unwrap_err().contains("hunter2"));
}

#[test]
fn creds_table_lists_lease_then_credential() {
    let body = issued("postgres", json!({"password": "pw", "username": "v_app_ro_x"}));
    assert_eq!(
        creds_table(&body),
        "lease_id     app_ro/AbC\n\
         role         app_ro\n\
         ttl_seconds  900\n\
         expires_at   2030-01-01T00:15:00Z\n\
         renewable    true\n\
         username     v_app_ro_x\n\
         password     pw\n"
    );
}

#[test]
fn lease_table_aligns_columns() {
    let body = json!({"leases": [
        {"lease_id": "app_ro/AbC", "role": "app_ro", "username": "v_app_ro_1", "state": "active",
         "issued_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T01:00:00Z", "renewable": true,
         "owner": {"uid": 1000, "gid": 1000, "pid": 42}},
        {"lease_id": "reporting/Xy", "role": "reporting", "username": null, "state": "irrevocable",
         "expires_at": "2030-01-01T00:30:00Z", "owner": {"uid": 0}},
    ]});
    assert_eq!(
        lease_table(&body).unwrap(),
        "LEASE_ID      ROLE       USERNAME    STATE        EXPIRES_AT            OWNER\n\
         app_ro/AbC    app_ro     v_app_ro_1  active       2030-01-01T01:00:00Z  1000\n\
         reporting/Xy  reporting  -           irrevocable  2030-01-01T00:30:00Z  0\n"
    );
    assert_eq!(
        lease_table(&json!({"leases": []})).unwrap(),
        "LEASE_ID  ROLE  USERNAME  STATE  EXPIRES_AT  OWNER\n"
    );
    assert!(lease_table(&json!({})).is_err());
}

#[test]
fn tidy_prints_one_line_per_user() {
    let body = json!({"connections": [
        {"connection": "pg", "dropped": ["v_a", "v_b"], "would_drop": [], "errors": []},
        {"connection": "shop", "dropped": [], "would_drop": ["v_c"], "errors": ["dropping v_d: down\nhard"]},
    ]});
    assert_eq!(
        tidy_lines(&body).unwrap(),
        "pg: dropped v_a\npg: dropped v_b\nshop: would drop v_c\nshop: error: dropping v_d: down hard\n"
    );
    let empty = json!({"connections": [{"connection": "pg", "dropped": [], "would_drop": [], "errors": []}]});
    assert_eq!(tidy_lines(&empty).unwrap(), "nothing to drop (pg)\n");
    assert!(Cli::try_parse_from(["lessor", "tidy", "--connection", "pg", "--dry-run"]).is_ok());
}

#[test]
fn api_errors_become_one_line() {
    let r =
        Response { status: 404, body: json!({"error": {"code": "unknown_role", "message": "no role\n`x`"}}) };
    assert_eq!(success(r).unwrap_err().message, "no role `x` (unknown_role, HTTP 404)");
    let r = Response { status: 502, body: Value::Null };
    let f = success(r).unwrap_err();
    assert_eq!((f.message.as_str(), f.code), ("Bad Gateway (HTTP 502)", 1));
    let r = Response { status: 200, body: json!({"ok": true}) };
    assert_eq!(success(r).unwrap(), json!({"ok": true}));
}
