use super::*;

fn table(src: &str) -> toml::Table {
    src.parse().unwrap()
}

fn conn(url: Option<&str>, options: &str) -> Result<ConnectionSettings, ConfigError> {
    ConnectionSettings::parse("shop", url, None, 4, &table(options))
}

#[test]
fn urls_parse() {
    let c = conn(Some("mysql://lessor_admin@db.internal:3307/"), "").unwrap();
    assert_eq!(c.address, Address::Tcp { host: "db.internal".into(), port: 3307 });
    assert_eq!(c.user, "lessor_admin");
    assert_eq!(c.database, None);
    assert_eq!(c.options.max_username_length, 32);
    assert_eq!(c.target(), "lessor_admin@db.internal:3307");

    let c = conn(Some("mysql://a%40b@127.0.0.1/shop"), "max_username_length = 16").unwrap();
    assert_eq!(c.address, Address::Tcp { host: "127.0.0.1".into(), port: 3306 });
    assert_eq!(c.user, "a@b");
    assert_eq!(c.database.as_deref(), Some("shop"));
    assert_eq!(c.options.max_username_length, 16);

    let c = conn(Some("mysql://admin@[::1]:3310"), "").unwrap();
    assert_eq!(c.address, Address::Tcp { host: "::1".into(), port: 3310 });

    let c = conn(Some("mysql://admin@localhost/?socket=%2Frun%2Fmysqld%2Fmysqld.sock"), "").unwrap();
    assert_eq!(c.address, Address::Socket("/run/mysqld/mysqld.sock".into()));
    assert_eq!(c.target(), "admin@unix:/run/mysqld/mysqld.sock");
}

#[test]
fn bad_urls_name_the_key_and_never_echo_the_url() {
    for (url, needle) in [
        ("postgres://a@h/", "mysql://"),
        ("mysql://h:3306/", "no user"),
        ("mysql://@h:3306/", "no user"),
        ("mysql://a@:3306/", "no host"),
        ("mysql://a@h:0/", "port"),
        ("mysql://a@h:99999/", "port"),
        ("mysql://a@h/db/x", "at most one database"),
        ("mysql://a@h/?pool_max=50", "unknown URL parameter \"pool_max\""),
        ("mysql://a@h/?ssl-mode=required", "unknown URL parameter"),
    ] {
        let e = conn(Some(url), "").unwrap_err();
        assert_eq!(e.key, "connections.shop.url", "{url}");
        assert!(e.message.contains(needle), "{url}: {e}");
    }
    let e = conn(None, "").unwrap_err();
    assert_eq!(e.key, "connections.shop.url");
}

#[test]
fn password_in_url_or_options_is_refused_without_echoing_it() {
    let e = conn(Some("mysql://admin:hunter2secret@h:3306/"), "").unwrap_err();
    assert_eq!(e.key, "connections.shop.url");
    assert!(e.message.contains("password_file"), "{e}");
    assert!(!e.to_string().contains("hunter2secret"), "{e}");

    let e = conn(Some("mysql://a@h/"), "password = \"hunter2secret\"").unwrap_err();
    assert_eq!(e.key, "connections.shop.password");
    assert!(e.message.contains("password_file"), "{e}");
    assert!(!e.to_string().contains("hunter2secret"), "{e}");
}

#[test]
fn connection_option_errors_name_the_key() {
    let e = conn(Some("mysql://a@h/"), "max_username_lenght = 16").unwrap_err();
    assert_eq!(e.key, "connections.shop.max_username_lenght");
    assert!(e.message.contains("unknown field"), "{e}");
    let e = conn(Some("mysql://a@h/"), "max_username_length = 0").unwrap_err();
    assert_eq!(e.key, "connections.shop.max_username_length");
    let e = conn(Some("mysql://a@h/"), "max_username_length = 200").unwrap_err();
    assert_eq!(e.key, "connections.shop.max_username_length");
    let e = ConnectionSettings::parse("shop", Some("mysql://a@h/"), None, 0, &table("")).unwrap_err();
    assert_eq!(e.key, "connections.shop.max_connections");
}

#[test]
fn debug_hides_the_admin_password() {
    let pw = SecretString::from("s3cr3t-admin-pw");
    let c = ConnectionSettings::parse("shop", Some("mysql://a@h/"), Some(&pw), 2, &table("")).unwrap();
    assert_eq!(c.password(), Some("s3cr3t-admin-pw"));
    let dbg = format!("{c:?} {c:#?}");
    assert!(!dbg.contains("s3cr3t-admin-pw"), "{dbg}");
    assert!(dbg.contains("a@h:3306"), "{dbg}");
}

#[test]
fn tls_mode_defaults_by_host_and_reads_mysql_names() {
    let c = conn(Some("mysql://a@db.internal:3306/"), "").unwrap();
    assert_eq!((c.tls.mode, c.tls.explicit), (TlsMode::VerifyFull, false));
    let c = conn(Some("mysql://a@127.0.0.1:3306/"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::Disable);
    let c = conn(Some("mysql://a@localhost/?socket=/run/mysqld/mysqld.sock"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::Disable);
    for (name, mode) in [
        ("disabled", TlsMode::Disable),
        ("preferred", TlsMode::Prefer),
        ("required", TlsMode::Require),
        ("verify_identity", TlsMode::VerifyFull),
    ] {
        let c = conn(Some("mysql://a@db.internal:3306/"), &format!("tls_mode = \"{name}\"")).unwrap();
        assert_eq!((c.tls.mode, c.tls.explicit), (mode, true), "{name}");
        assert_eq!(mode.mysql_name(), name);
    }
    // verify_ca against the system's public roots would take any
    // certificate for any name: it needs a CA file.
    let e = conn(Some("mysql://a@db.internal:3306/"), "tls_mode = \"verify_ca\"").unwrap_err();
    assert!(e.key.ends_with(".tls_mode") && e.message.contains("tls_ca_file"), "{e}");
    let c = conn(Some("mysql://a@db.internal:3306/"), "tls_mode = \"disabled\"").unwrap();
    assert!(c.tls.plaintext_warning("shop", "t", TlsMode::mysql_name).is_some());

    let e = conn(Some("mysql://a@db.internal:3306/"), "tls_mode = \"verify-full\"").unwrap_err();
    assert_eq!(e.key, "connections.shop.tls_mode");
    let e = conn(Some("mysql://a@localhost/?socket=/run/mysqld/mysqld.sock"), "tls_mode = \"required\"")
        .unwrap_err();
    assert!(e.message.contains("Unix socket"), "{e}");
    let e = conn(Some("mysql://a@db.internal:3306/"), "tls_ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
    assert_eq!(e.key, "connections.shop.tls_ca_file");
}

#[test]
fn role_parses_and_defaults() {
    let r = MySqlRole::parse(
        "shop_rw",
        &table(
            r#"creation_statements = [
                "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
                "GRANT SELECT ON shop.* TO '{{name}}'@'%'",
            ]"#,
        ),
    )
    .unwrap();
    assert_eq!(r.creation.len(), 2);
    assert!(r.revocation.is_none() && r.renew.is_none() && r.rollback.is_none());

    let r = MySqlRole::parse(
        "shop_rw",
        &table(
            r#"creation_statements = ["CREATE USER '{{name}}'@'%'"]
            revocation_statements = ["DROP USER IF EXISTS '{{username}}'@'%'"]
            renew_statements = ["DO '{{name}}', '{{expiration}}'"]
            rollback_statements = ["DROP USER IF EXISTS '{{name}}'@'%'"]"#,
        ),
    )
    .unwrap();
    assert_eq!(r.revocation.unwrap().len(), 1);
    assert_eq!(r.renew.unwrap().len(), 1);
    assert_eq!(r.rollback.unwrap().len(), 1);
}

#[test]
fn native_password_hash_matches_the_server() {
    // MariaDB 10.11: CREATE USER … IDENTIFIED BY 'x' stores this.
    assert_eq!(native_password_hash("x"), "*B69027D44F6E5EDC07F1AEAD1477967B16F28227");
}

#[test]
fn the_password_form_must_match_the_encoding() {
    use MySqlPasswordEncoding::*;
    let create = |s: &str| format!("creation_statements = [{s:?}]");
    let ok = |s: &str, e| MySqlRole::parse_for("r", &table(&create(s)), e).is_ok();
    assert!(ok("CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'", Plaintext));
    assert!(ok("CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'", MysqlNativePassword));
    assert!(ok(
        "CREATE USER '{{name}}'@'%' IDENTIFIED WITH mysql_native_password AS '{{ password }}'",
        MysqlNativePassword
    ));
    assert!(ok("CREATE USER '{{name}}'@'%'", MysqlNativePassword));
    let e = MySqlRole::parse_for(
        "r",
        &table(&create("CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'")),
        MysqlNativePassword,
    )
    .unwrap_err();
    assert_eq!(e.key, "roles.r.creation_statements");
    assert!(e.message.contains("statement 1") && e.message.contains("IDENTIFIED BY PASSWORD"), "{e}");
    let e = MySqlRole::parse_for(
        "r",
        &table(&create("CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'")),
        Plaintext,
    )
    .unwrap_err();
    assert!(e.message.contains("takes a hash"), "{e}");
    let c = conn(Some("mysql://a@h/"), "password_encoding = \"mysql_native_password\"").unwrap();
    assert_eq!(c.options.password_encoding, MysqlNativePassword);
    let e = conn(Some("mysql://a@h/"), "password_encoding = \"sha256\"").unwrap_err();
    assert_eq!(e.key, "connections.shop.password_encoding");
}

#[test]
fn role_errors_name_the_key() {
    let err = |src: &str| MySqlRole::parse("shop_rw", &table(src)).unwrap_err();

    let e = err("");
    assert_eq!(e.key, "roles.shop_rw.creation_statements");
    let e = err("creation_statements = []");
    assert_eq!(e.key, "roles.shop_rw.creation_statements");
    let e = err(r#"creation_statements = ["CREATE USER '{{nmae}}'@'%'"]"#);
    assert_eq!(e.key, "roles.shop_rw.creation_statements");
    assert!(e.message.contains("statement 1") && e.message.contains("{{nmae}}"), "{e}");
    let e = err(r#"creation_statements = ["CREATE USER bob"]"#);
    assert!(e.message.contains("{{name}}"), "{e}");
    let e = err(r#"creation_statements = ["CREATE USER '{{name}}'", " "]"#);
    assert!(e.message.contains("statement 2 is empty"), "{e}");

    let e = err(r#"creation_statements = ["CREATE USER '{{name}}'"]
        revocation_statments = ["DROP USER '{{name}}'"]"#);
    assert_eq!(e.key, "roles.shop_rw.revocation_statments");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = err(r#"creation_statements = ["CREATE USER '{{name}}'"]
        renew_statements = []"#);
    assert_eq!(e.key, "roles.shop_rw.renew_statements");
    let e = err(r#"creation_statements = ["CREATE USER '{{name}}'"]
        rollback_statements = ["ALTER USER '{{name}}' IDENTIFIED BY '{{password}}'"]"#);
    assert_eq!(e.key, "roles.shop_rw.rollback_statements");
    assert!(e.message.contains("{{password}}"), "{e}");
}
