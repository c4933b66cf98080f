use super::*;
use chrono::TimeZone;

fn plugin(options: &str) -> MySqlPlugin {
    let options: toml::Table = options.parse().unwrap();
    MySqlPlugin::new(ConnectionContext {
        name: "shop",
        url: Some("mysql://lessor_admin@db.internal:3306/"),
        password: Some(SecretString::from("admin-pw-never-shown")),
        max_connections: 3,
        operation_timeout: std::time::Duration::from_secs(30),
        options: &options,
    })
    .unwrap()
}

#[test]
fn expiration_is_utc_without_offset() {
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    assert_eq!(format_expiration(at), "2026-11-22 10:00:00");
}

#[test]
fn accounts_and_patterns_are_quoted() {
    assert_eq!(account("v_app_1", "%"), "`v_app_1`@`%`");
    assert_eq!(account("a`b", "10.0.0.%"), "`a``b`@`10.0.0.%`");
    assert_eq!(like_prefix("v_app_"), "v!_app!_%");
    assert_eq!(like_prefix("a%b!"), "a!%b!!%");
}

#[test]
fn usernames_that_break_quoting_are_refused() {
    let p = plugin("max_username_length = 16");
    let cx = Context::new(Operation::Create, None);
    assert!(p.check_username("v_app_ro_abc123", &cx).is_ok());
    for bad in ["", "a'b", "a`b", "a b", "a\\b", "a-b", &"x".repeat(17)] {
        assert!(p.check_username(bad, &cx).is_err(), "{bad:?}");
    }
}

#[test]
fn debug_hides_the_admin_password() {
    let p = plugin("");
    let dbg = format!("{p:?} {p:#?}");
    assert!(!dbg.contains("admin-pw-never-shown"), "{dbg}");
    assert!(dbg.contains("lessor_admin@db.internal:3306"), "{dbg}");
}

#[test]
fn capabilities_and_roles() {
    let p = plugin("max_username_length = 16");
    assert_eq!(p.name(), "mysql");
    let caps = p.capabilities();
    assert!(caps.renewable && caps.revocable);
    assert_eq!(caps.max_username_len, 16);
    assert_eq!(plugin("").capabilities().max_username_len, 32);
    let options: toml::Table = r#"creation_statements = ["CREATE USER '{{name}}'@'%'"]"#.parse().unwrap();
    let settings = p.check_role("shop_rw", &options).unwrap();
    assert!(downcast_role::<MySqlRole>(&settings).is_ok());
    let e = p.check_role("shop_rw", &toml::Table::new()).unwrap_err();
    assert_eq!(e.key, "roles.shop_rw.creation_statements");
}
