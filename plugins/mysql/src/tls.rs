//! TLS for every connection the plugin opens (the admin pool, `KILL QUERY`,
//! a static account's login test): one set of `SslOpts` built from the
//! connection's [`TlsSettings`], so all are encrypted and verified alike.
//!
//! mysql_async builds its own rustls config from `SslOpts`; lessor gives it
//! the roots itself (the CA file, or the system's, never the driver's
//! bundled Mozilla list) and the client identity.

use lessor_plugin::tls::{self, TlsMode, TlsSettings};
use mysql_async::prelude::Queryable;
use mysql_async::{ClientIdentity, Conn, SslOpts};

/// The driver's TLS options for `settings`; `None` when TLS is off.
pub(crate) fn ssl_opts(settings: &TlsSettings) -> Result<Option<SslOpts>, String> {
    if settings.mode == TlsMode::Disable {
        return Ok(None);
    }
    // Makes the aws-lc-rs provider the process default the driver builds on.
    tls::provider();
    let mut ssl = SslOpts::default();
    let mode = settings.effective();
    if mode.verifies_chain() {
        let roots = settings.root_certificates()?.into_iter().map(|cert| cert.to_vec().into()).collect();
        ssl = ssl.with_root_certs(roots).with_disable_built_in_roots(true);
    } else {
        ssl = ssl.with_danger_accept_invalid_certs(true);
    }
    if mode == TlsMode::VerifyCa {
        ssl = ssl.with_danger_skip_domain_validation(true);
    }
    if let (Some(cert), Some(key)) = (&settings.files.client_cert_file, &settings.files.client_key_file) {
        ssl = ssl.with_client_identity(Some(ClientIdentity::new(cert.clone().into(), key.clone().into())));
    }
    Ok(Some(ssl))
}

/// Why `err` is a failed TLS handshake, in words, if it is one.
pub(crate) fn failure(err: &mysql_async::Error) -> Option<String> {
    if let mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) = err {
        return Some("the server does not offer TLS (have_ssl is not YES); configure its certificate, or set tls_mode = \"preferred\" to allow plaintext".into());
    }
    tls::explain(err)
}

/// Whether `err` says the server offers no TLS at all.
pub(crate) fn is_no_tls_offered(err: &mysql_async::Error) -> bool {
    matches!(err, mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer))
}

/// The TLS version and cipher of `conn`'s session, as the server sees it
/// (`Ssl_version`, `Ssl_cipher`); `None` when the session is not encrypted.
pub(crate) async fn session(conn: &mut Conn) -> Result<Option<String>, mysql_async::Error> {
    let rows: Vec<(String, String)> =
        conn.query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')").await?;
    let get = |name: &str| rows.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let cipher = get("Ssl_cipher");
    Ok((!cipher.is_empty()).then(|| format!("{} {cipher}", get("Ssl_version"))))
}
