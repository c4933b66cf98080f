use super::*;

fn table(src: &str) -> toml::Table {
    src.parse().unwrap()
}

fn conn(url: Option<&str>, options: &str) -> Result<ConnectionSettings, ConfigError> {
    ConnectionSettings::parse("pg_main", url, None, 4, &table(options))
}

#[test]
fn connection_defaults_to_scram() {
    let c = conn(Some("postgres://lessor_admin@db.internal:5433/app"), "").unwrap();
    assert_eq!(c.options.password_encoding, PasswordEncoding::ScramSha256);
    assert_eq!(c.options.scram_iterations, 4096);
    let one = conn(Some("postgres://a@h/d"), "scram_iterations = 1").unwrap();
    assert_eq!(one.options.scram_iterations, 1);
    let e = conn(Some("postgres://a@h/d"), "scram_iterations = 0").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.scram_iterations");
    assert_eq!(target(&c.pg), "lessor_admin@db.internal:5433/app");
    let c = conn(Some("postgres://a@h/d"), "password_encoding = \"plaintext\"").unwrap();
    assert_eq!(c.options.password_encoding, PasswordEncoding::Plaintext);
}

#[test]
fn connection_errors_name_the_key() {
    let e = conn(Some("postgres://a@h/d"), "pasword_encoding = \"plaintext\"").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.pasword_encoding");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = conn(Some("postgres://a@h/d"), "password_encoding = \"md5\"").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.password_encoding");

    let e = conn(None, "").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.url");

    let e = conn(Some("postgres://h/d"), "").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.url");

    let e = ConnectionSettings::parse("pg_main", Some("postgres://a@h/d"), None, 0, &table("")).unwrap_err();
    assert_eq!(e.key, "connections.pg_main.max_connections");
}

#[test]
fn password_in_url_or_options_is_refused_without_echoing_it() {
    let e = conn(Some("postgres://admin:hunter2secret@h:5432/d"), "").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.url");
    assert!(e.message.contains("password_file"), "{e}");
    assert!(!e.to_string().contains("hunter2secret"), "{e}");

    let e = conn(Some("host=h user=admin password=hunter2secret"), "").unwrap_err();
    assert!(!e.to_string().contains("hunter2secret"), "{e}");

    let e = conn(Some("postgres://a@h/d"), "password = \"hunter2secret\"").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.password");
    assert!(e.message.contains("password_file"), "{e}");
    assert!(!e.to_string().contains("hunter2secret"), "{e}");
}

#[test]
fn debug_hides_the_admin_password() {
    let pw = SecretString::from("s3cr3t-admin-pw");
    let c = ConnectionSettings::parse("pg_main", Some("postgres://a@h/d"), Some(&pw), 2, &table("")).unwrap();
    assert_eq!(c.pg.get_password(), Some(&b"s3cr3t-admin-pw"[..]));
    let dbg = format!("{c:?} {c:#?}");
    assert!(!dbg.contains("s3cr3t-admin-pw"), "{dbg}");
    assert!(dbg.contains("a@h:5432/d"), "{dbg}");
}

#[test]
fn tls_parameters_leave_the_url_and_the_rest_stays() {
    let (rest, tls) = split_tls_params(
        "postgres://a@db/app?application_name=x&sslmode=verify-ca&sslrootcert=/etc/my%20ca.pem&sslcert=/c.pem&sslkey=/k.pem",
    )
    .unwrap();
    assert_eq!(rest, "postgres://a@db/app?application_name=x");
    assert_eq!(tls.mode, Some(TlsMode::VerifyCa));
    assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
    assert_eq!((tls.cert, tls.key), (Some(PathBuf::from("/c.pem")), Some(PathBuf::from("/k.pem"))));

    let (rest, tls) = split_tls_params("postgres://a@db/app?sslmode=require").unwrap();
    assert_eq!((rest.as_str(), tls.mode), ("postgres://a@db/app", Some(TlsMode::Require)));
    let (rest, tls) = split_tls_params("host=db user=a sslmode=disable dbname=app").unwrap();
    assert_eq!((rest.as_str(), tls.mode), ("host=db user=a dbname=app", Some(TlsMode::Disable)));
    assert_eq!(split_tls_params("postgres://a@db/app").unwrap().1, UrlTls::default());

    // Quoted values are left whole; TLS parameters in quotes or with
    // spaces around `=` are refused, not misread.
    let (rest, tls) =
        split_tls_params("host=db application_name='a sslmode=disable b' sslmode=require").unwrap();
    assert_eq!(rest, "host=db application_name='a sslmode=disable b'");
    assert_eq!(tls.mode, Some(TlsMode::Require));
    for bad in ["host=db sslrootcert='/my ca.pem'", "host=db sslmode = require", "host=db sslmode= require"] {
        let e = split_tls_params(bad).unwrap_err();
        assert!(e.contains("without quotes or spaces"), "{bad}: {e}");
    }

    let e = split_tls_params("postgres://a@db/app?sslmode=allow").unwrap_err();
    assert!(e.contains("allow"), "{e}");
    let e = split_tls_params("postgres://a@db/app?sslmode=verify_full").unwrap_err();
    assert!(e.contains("verify-full"), "{e}");
}

#[test]
fn hosts_off_this_machine_default_to_verify_full() {
    let c = conn(Some("postgres://a@db.internal/app"), "").unwrap();
    assert_eq!((c.tls.mode, c.tls.explicit), (TlsMode::VerifyFull, false));
    assert_eq!(c.pg.get_ssl_mode(), SslMode::Require);
    let c = conn(Some("postgres://a@127.0.0.1/app"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::Prefer);
    assert_eq!(c.pg.get_ssl_mode(), SslMode::Prefer);
    let c = conn(Some("host=/var/run/postgresql user=a dbname=app"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::Disable);
    let e = conn(Some("host=/var/run/postgresql user=a dbname=app sslmode=require"), "").unwrap_err();
    assert!(e.key.ends_with(".url") && e.message.contains("Unix socket"), "{e}");
    // Several hosts: one off this machine is enough.
    let c = conn(Some("postgres://a@localhost,db.internal/app"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::VerifyFull);
    let c = conn(Some("postgres://a@db.internal/app?sslmode=disable"), "").unwrap();
    assert_eq!((c.tls.mode, c.tls.explicit), (TlsMode::Disable, true));
    assert_eq!(c.pg.get_ssl_mode(), SslMode::Disable);
    assert!(c.tls.plaintext_warning("pg_main", "t", TlsMode::libpq_name).is_some());
    // hostaddr is where the connection goes, whatever the host says.
    let c = conn(Some("postgres://a@localhost/app?hostaddr=203.0.113.5"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::VerifyFull);
    let c = conn(Some("host=/var/run/postgresql hostaddr=203.0.113.5 user=a"), "").unwrap();
    assert_eq!(c.tls.mode, TlsMode::VerifyFull);
    // libpq 16's sslrootcert=system.
    let c = conn(Some("postgres://a@db.internal/app?sslrootcert=system"), "").unwrap();
    assert_eq!((c.tls.mode, c.tls.files.ca_file.clone()), (TlsMode::VerifyFull, None));
    let e = conn(Some("postgres://a@db.internal/app?sslrootcert=system&sslmode=require"), "").unwrap_err();
    assert!(e.message.contains("verify-full"), "{e}");
}

#[test]
fn a_tls_file_is_given_once() {
    let e = conn(Some("postgres://a@db/app?sslrootcert=/etc/ca.pem"), "tls_ca_file = \"/etc/other.pem\"")
        .unwrap_err();
    assert_eq!(e.key, "connections.pg_main.tls_ca_file");
    assert!(e.message.contains("sslrootcert"), "{e}");
    let e = conn(Some("postgres://a@db/app"), "tls_ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
    assert_eq!(e.key, "connections.pg_main.tls_ca_file");
    assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
}

#[test]
fn role_parses_and_defaults() {
    let r = PgRole::parse(
        "app_ro",
        &table(
            r#"creation_statements = [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\"",
            ]"#,
        ),
    )
    .unwrap();
    assert_eq!(r.creation.len(), 2);
    assert!(r.revocation.is_none() && r.renew.is_none() && r.rollback.is_none());

    let r = PgRole::parse(
        "app_ro",
        &table(
            r#"creation_statements = ["CREATE ROLE \"{{name}}\""]
            revocation_statements = ["DROP ROLE IF EXISTS \"{{username}}\""]
            renew_statements = ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"]
            rollback_statements = ["DROP ROLE IF EXISTS \"{{name}}\""]"#,
        ),
    )
    .unwrap();
    assert_eq!(r.revocation.unwrap().len(), 1);
    assert_eq!(r.renew.unwrap().len(), 1);
    assert_eq!(r.rollback.unwrap().len(), 1);
}

#[test]
fn role_errors_name_the_key() {
    let err = |src: &str| PgRole::parse("app_ro", &table(src)).unwrap_err();

    let e = err("");
    assert_eq!(e.key, "roles.app_ro.creation_statements");
    let e = err("creation_statements = []");
    assert_eq!(e.key, "roles.app_ro.creation_statements");
    let e = err(r#"creation_statements = ["CREATE ROLE \"{{nmae}}\""]"#);
    assert_eq!(e.key, "roles.app_ro.creation_statements");
    assert!(e.message.contains("statement 1") && e.message.contains("{{nmae}}"), "{e}");
    let e = err(r#"creation_statements = ["CREATE ROLE bob"]"#);
    assert!(e.message.contains("{{name}}"), "{e}");
    let e = err(r#"creation_statements = ["CREATE ROLE \"{{name}}\"", " "]"#);
    assert!(e.message.contains("statement 2 is empty"), "{e}");
    let e = err(r#"creation_statements = "CREATE ROLE \"{{name}}\"""#);
    assert_eq!(e.key, "roles.app_ro.creation_statements");

    let e = err(r#"creation_statements = ["CREATE ROLE \"{{name}}\""]
        revocation_statments = ["DROP ROLE \"{{name}}\""]"#);
    assert_eq!(e.key, "roles.app_ro.revocation_statments");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = err(r#"creation_statements = ["CREATE ROLE \"{{name}}\""]
        renew_statements = []"#);
    assert_eq!(e.key, "roles.app_ro.renew_statements");
    let e = err(r#"creation_statements = ["CREATE ROLE \"{{name}}\""]
        revocation_statements = ["DROP ROLE \"{{name}\""]"#);
    assert_eq!(e.key, "roles.app_ro.revocation_statements");
}
