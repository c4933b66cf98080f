use super::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn files(ca: Option<&Path>) -> TlsFiles {
    TlsFiles { ca_file: ca.map(Path::to_path_buf), ..TlsFiles::default() }
}

#[test]
fn hosts_that_stay_on_this_machine() {
    for host in ["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.2", "::1", "[::1]", "/var/run/postgresql"] {
        assert!(is_local_host(host), "{host}");
    }
    for host in ["db.internal", "10.0.0.5", "192.168.1.1", "::2", "localhost.example.com", "0.0.0.0"] {
        assert!(!is_local_host(host), "{host}");
    }
}

#[test]
fn remote_hosts_default_to_full_verification() {
    let s = TlsSettings::resolve(None, TlsFiles::default(), "db.internal", TlsMode::Prefer);
    assert_eq!((s.mode, s.explicit, s.local), (TlsMode::VerifyFull, false, false));
    let s = TlsSettings::resolve(None, TlsFiles::default(), "127.0.0.1", TlsMode::Prefer);
    assert_eq!((s.mode, s.local), (TlsMode::Prefer, true));
    let s = TlsSettings::resolve(None, TlsFiles::default(), "/tmp", TlsMode::Disable);
    assert_eq!(s.mode, TlsMode::Disable);
    // A CA file alone asks for verification, on loopback too.
    let s = TlsSettings::resolve(None, files(Some(Path::new("/ca.pem"))), "localhost", TlsMode::Disable);
    assert_eq!(s.mode, TlsMode::VerifyFull);
    let s = TlsSettings::resolve(Some(TlsMode::Require), TlsFiles::default(), "db.internal", TlsMode::Prefer);
    assert_eq!((s.mode, s.explicit), (TlsMode::Require, true));
}

#[test]
fn plaintext_to_a_remote_host_is_warned_about() {
    let warn = |mode, host| {
        TlsSettings::resolve(Some(mode), TlsFiles::default(), host, TlsMode::Prefer).plaintext_warning(
            "pg_main",
            "admin@db:5432/app",
            TlsMode::libpq_name,
        )
    };
    let text = warn(TlsMode::Disable, "db.internal").expect("a warning");
    assert!(text.contains("pg_main") && text.contains("disable") && text.contains("not loopback"), "{text}");
    assert!(warn(TlsMode::Prefer, "10.1.2.3").is_some());
    assert!(warn(TlsMode::Require, "db.internal").is_none());
    assert!(warn(TlsMode::Disable, "127.0.0.1").is_none());
}

#[test]
fn require_with_a_ca_file_checks_the_chain() {
    let s =
        TlsSettings::resolve(Some(TlsMode::Require), files(Some(Path::new("/ca.pem"))), "h", TlsMode::Prefer);
    assert_eq!(s.effective(), TlsMode::VerifyCa);
    let s = TlsSettings::resolve(Some(TlsMode::Require), TlsFiles::default(), "h", TlsMode::Prefer);
    assert_eq!(s.effective(), TlsMode::Require);
    assert_eq!(s.verification(), "certificate not verified");
}

#[test]
fn file_checks_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let s = TlsSettings::resolve(None, files(Some(&missing)), "h", TlsMode::Prefer);
    let e = s.check("connections.pg", "url").unwrap_err();
    assert_eq!(e.key, "connections.pg.tls_ca_file");
    assert!(e.message.contains("missing.pem"), "{e}");

    let key = dir.path().join("client.key");
    std::fs::write(&key, "not really a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "x").unwrap();
    let with_key = TlsFiles {
        client_cert_file: Some(cert.clone()),
        client_key_file: Some(key.clone()),
        ..TlsFiles::default()
    };
    let e = TlsSettings::resolve(None, with_key.clone(), "h", TlsMode::Prefer)
        .check("connections.pg", "url")
        .unwrap_err();
    assert_eq!(e.key, "connections.pg.tls_client_key_file");
    assert!(e.message.contains("0644") && e.message.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    TlsSettings::resolve(None, with_key, "h", TlsMode::Prefer).check("connections.pg", "url").unwrap();

    let cert_only = TlsFiles { client_cert_file: Some(cert), ..TlsFiles::default() };
    let e = TlsSettings::resolve(None, cert_only, "h", TlsMode::Prefer)
        .check("connections.pg", "url")
        .unwrap_err();
    assert_eq!(e.key, "connections.pg.tls_client_key_file");

    let e = TlsSettings::resolve(Some(TlsMode::Disable), files(Some(&missing)), "h", TlsMode::Prefer)
        .check("connections.pg", "url")
        .unwrap_err();
    assert_eq!(e.key, "connections.pg.url");
}

#[test]
fn modes_that_would_ignore_or_misuse_a_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let check = |mode, files| {
        TlsSettings::resolve(Some(mode), files, "h", TlsMode::Prefer).check("connections.c", "tls_mode")
    };
    // verify-ca against the public CAs: any certificate for any name.
    let e = check(TlsMode::VerifyCa, TlsFiles::default()).unwrap_err();
    assert_eq!(e.key, "connections.c.tls_mode");
    assert!(e.message.contains("tls_ca_file") && e.message.contains("verify-full"), "{e}");
    check(TlsMode::VerifyCa, files(Some(&ca))).unwrap();
    check(TlsMode::Require, files(Some(&ca))).unwrap();
    // prefer never checks, so a CA file would be ignored.
    let e = check(TlsMode::Prefer, files(Some(&ca))).unwrap_err();
    assert!(e.message.contains("ignored"), "{e}");
    check(TlsMode::VerifyFull, TlsFiles::default()).unwrap();
}

#[test]
fn server_text_is_cleaned() {
    assert_eq!(server_text("Host 'x'\n\u{1b}[31m is blocked"), "Host 'x'[31m is blocked");
    assert_eq!(server_text(&"a".repeat(500)).len(), 200);
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "no certificates here\n").unwrap();
    let s = TlsSettings::resolve(Some(TlsMode::VerifyFull), files(Some(&ca)), "h", TlsMode::Prefer);
    let e = s.client_config().unwrap_err();
    assert!(e.contains("ca.pem") && e.contains("no PEM certificate"), "{e}");
    assert!(TlsSettings::resolve(Some(TlsMode::Disable), TlsFiles::default(), "h", TlsMode::Prefer)
        .client_config()
        .unwrap()
        .is_none());
    // Without verification no roots are read at all.
    assert!(TlsSettings::resolve(Some(TlsMode::Require), TlsFiles::default(), "h", TlsMode::Prefer)
        .client_config()
        .unwrap()
        .is_some());
}

#[test]
fn handshake_failures_read_as_words() {
    let wrapped = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let e = wrapped(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer));
    assert!(explain(&e).unwrap().contains("unknown issuer"));
    let e = wrapped(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("127.0.0.2").unwrap(),
        presented: vec!["DnsName(\"localhost\")".into()],
    }));
    let text = explain(&e).unwrap();
    assert!(
        text.contains("name mismatch") && text.contains("127.0.0.2") && text.contains("localhost"),
        "{text}"
    );
    let e = wrapped(rustls::Error::InvalidCertificate(CertificateError::Expired));
    assert!(explain(&e).unwrap().contains("expired"));
    let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert!(explain(&plain).is_none());
}
