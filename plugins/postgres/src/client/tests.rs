use super::*;
use chrono::TimeZone;

fn plugin(options: &str) -> PgPlugin {
    let options: toml::Table = options.parse().unwrap();
    PgPlugin::new(ConnectionContext {
        name: "pg_main",
        url: Some("postgres://lessor_admin@db.internal:5432/app"),
        password: Some(SecretString::from("admin-pw-never-shown")),
        max_connections: 3,
        operation_timeout: std::time::Duration::from_secs(30),
        options: &options,
    })
    .unwrap()
}

#[tokio::test]
async fn plaintext_to_a_remote_host_is_logged_at_start() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let build = |url: &str| {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
        let options = toml::Table::new();
        tracing::subscriber::with_default(subscriber, || {
            PgPlugin::new(ConnectionContext {
                name: "pg_main",
                url: Some(url),
                password: None,
                max_connections: 3,
                operation_timeout: std::time::Duration::from_secs(30),
                options: &options,
            })
            .unwrap()
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    };
    let logged = build("postgres://lessor_admin@db.internal:5432/app?sslmode=disable");
    assert!(
        logged.contains("WARN") && logged.contains("pg_main") && logged.contains("not loopback"),
        "{logged}"
    );
    assert!(build("postgres://lessor_admin@127.0.0.1:5432/app?sslmode=disable").is_empty());
    assert!(build("postgres://lessor_admin@db.internal:5432/app").is_empty());
}

#[test]
fn expiration_is_utc_with_offset() {
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    assert_eq!(format_expiration(at), "2026-11-22 10:00:00+00");
}

#[test]
fn identifiers_are_quoted() {
    assert_eq!(quote_ident("v_app_1"), "\"v_app_1\"");
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

#[test]
fn usernames_that_break_quoting_are_refused() {
    let cx = Context::new(Operation::Create, None);
    assert!(check_username("v_app_ro_abc123", &cx).is_ok());
    for bad in ["", "a\"b", "a'b", "a b", "a\\b", &"x".repeat(64)] {
        assert!(check_username(bad, &cx).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn debug_hides_the_admin_password() {
    let p = plugin("password_encoding = \"plaintext\"");
    let dbg = format!("{p:?} {p:#?}");
    assert!(!dbg.contains("admin-pw-never-shown"), "{dbg}");
    assert!(dbg.contains("lessor_admin@db.internal:5432/app"), "{dbg}");
    // The pool's own Debug reaches the manager's tokio_postgres::Config.
    let pool = format!("{:?}", p.pool.read().unwrap().manager());
    assert!(!pool.contains("admin-pw-never-shown"), "{pool}");
}

#[tokio::test]
async fn capabilities_and_roles() {
    let p = plugin("");
    assert_eq!(p.name(), "postgres");
    let caps = p.capabilities();
    assert!(caps.renewable && caps.revocable);
    assert_eq!(caps.max_username_len, 63);
    let options: toml::Table = r#"creation_statements = ["CREATE ROLE \"{{name}}\""]"#.parse().unwrap();
    let settings = p.check_role("app", &options).unwrap();
    assert!(downcast_role::<PgRole>(&settings).is_ok());
    let e = p.check_role("app", &toml::Table::new()).unwrap_err();
    assert_eq!(e.key, "roles.app.creation_statements");
}
