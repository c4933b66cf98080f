//! TLS to a backend, as both SQL plugins speak it.
//!
//! libpq's `sslmode` and MySQL's `--ssl-mode` name the same five levels with
//! different words; [`TlsMode`] is that level, and each plugin parses its
//! own spelling into it. What the levels mean, which one applies when the
//! config says nothing, which files they read and how a failed handshake
//! reads in an error live here, so the two backends cannot drift apart:
//!
//! - a host that is not loopback or a Unix socket defaults to
//!   [`TlsMode::VerifyFull`]: an admin login and every `CREATE ROLE` cross
//!   that network, so they are encrypted and the server must prove who it is;
//! - the CA is `tls_ca_file` or, without one, the system's roots
//!   (`rustls-native-certs`, which reads the same bundle as OpenSSL);
//! - the crypto is rustls with the aws-lc-rs provider, already in the tree
//!   through the AWS SDK, so there is no OpenSSL to link.

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::files;
use crate::ConfigError;

/// How much a connection's TLS must prove, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plaintext otherwise; no verification.
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless a CA
    /// file is given: then, as in libpq, the chain is).
    Require,
    /// TLS, and the certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS, a trusted chain, and a certificate for the host connected to.
    VerifyFull,
}

impl TlsMode {
    /// Whether the server's certificate chain is checked.
    pub fn verifies_chain(self) -> bool {
        self >= Self::VerifyCa
    }

    /// libpq's name of the mode.
    pub fn libpq_name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// MySQL's name of the mode (`--ssl-mode`, lowercase).
    pub fn mysql_name(self) -> &'static str {
        match self {
            Self::Disable => "disabled",
            Self::Prefer => "preferred",
            Self::Require => "required",
            Self::VerifyCa => "verify_ca",
            Self::VerifyFull => "verify_identity",
        }
    }
}

/// The files a connection's TLS reads; paths as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM CA certificates the server's chain must lead to; `None`: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain), for certificate authentication.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key; mode 0600 or stricter.
    pub client_key_file: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }
}

/// A connection's TLS, resolved: the mode in force and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub files: TlsFiles,
    /// Whether the mode was written in the config (rather than defaulted).
    pub explicit: bool,
    /// Whether the host is loopback or a Unix socket.
    pub local: bool,
}

impl TlsSettings {
    /// Resolves the mode: the configured one, else [`TlsMode::VerifyFull`]
    /// for a host that is not local or a connection that names any TLS file,
    /// else `local_default` (each plugin keeps its driver family's default
    /// for loopback). `host` is a name, an address or a socket path.
    pub fn resolve(configured: Option<TlsMode>, files: TlsFiles, host: &str, local_default: TlsMode) -> Self {
        let local = is_local_host(host);
        let mode =
            configured.unwrap_or(if !local || files.any() { TlsMode::VerifyFull } else { local_default });
        Self { mode, files, explicit: configured.is_some(), local }
    }

    /// Checks the files (readable; the key private to its owner; a
    /// certificate and its key together) and that a mode without TLS is
    /// not given files it would ignore. `prefix` is `connections.NAME`;
    /// `mode_key` the key the mode is set with (`url` or `tls_mode`).
    pub fn check(&self, prefix: &str, mode_key: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("{prefix}.{field}");
        let f = &self.files;
        match (&f.client_cert_file, &f.client_key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    key("tls_client_key_file"),
                    "required with tls_client_cert_file",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    key("tls_client_cert_file"),
                    "required with tls_client_key_file",
                ))
            }
            _ => {}
        }
        if self.mode == TlsMode::Disable && f.any() {
            return Err(ConfigError::new(
                key(mode_key),
                "TLS is disabled, yet TLS files are configured; remove them or choose a mode that uses TLS",
            ));
        }
        if self.mode == TlsMode::Prefer && f.ca_file.is_some() {
            return Err(ConfigError::new(
                key(mode_key),
                "this mode never checks the certificate, so the CA file would be ignored; use verify-full (verify_identity) to check it",
            ));
        }
        // A chain check without the name check is only worth something
        // against a CA of one's own: any certificate the system's public CAs
        // issued, for any domain, would pass.
        if self.effective() == TlsMode::VerifyCa && f.ca_file.is_none() {
            return Err(ConfigError::new(
                key(mode_key),
                "verify-ca (verify_ca) with the system's roots accepts any publicly issued certificate for any name; give tls_ca_file (the CA that signs your servers) or use verify-full (verify_identity)",
            ));
        }
        for (field, path) in [("tls_ca_file", &f.ca_file), ("tls_client_cert_file", &f.client_cert_file)] {
            if let Some(path) = path {
                files::check_readable(path)
                    .map_err(|m| ConfigError::new(key(field), format!("{}: {m}", path.display())))?;
            }
        }
        if let Some(path) = &f.client_key_file {
            files::check_private(path).map_err(|m| {
                ConfigError::new(key("tls_client_key_file"), format!("{}: {m}", path.display()))
            })?;
        }
        Ok(())
    }

    /// The warning to log at every start when TLS is off (or may fall back
    /// to plaintext) on a connection that leaves this host.
    pub fn plaintext_warning(
        &self,
        connection: &str,
        target: &str,
        spelling: fn(TlsMode) -> &'static str,
    ) -> Option<String> {
        if self.local || self.mode > TlsMode::Prefer {
            return None;
        }
        Some(format!(
            "connection {connection} ({target}): TLS mode {} on a host that is not loopback: the admin login and every statement can be read and altered on the network",
            spelling(self.mode)
        ))
    }

    /// The message of a failed TLS handshake: the operation, the server,
    /// the connection and its mode, and why.
    pub fn failure(
        &self,
        operation: &str,
        target: &str,
        connection: &str,
        spelling: fn(TlsMode) -> &'static str,
        why: &str,
    ) -> String {
        format!(
            "{operation}: TLS with {target} (connection {connection}, TLS mode {}): {why}",
            spelling(self.mode)
        )
    }

    /// Whether the server's certificate is checked, for the start-up log.
    pub fn verification(&self) -> &'static str {
        match self.effective() {
            TlsMode::VerifyFull => "chain and host name verified",
            TlsMode::VerifyCa => "chain verified, host name not checked",
            _ => "certificate not verified",
        }
    }

    /// The mode as enforced: `require` with a CA file checks the chain, as
    /// libpq does.
    pub fn effective(&self) -> TlsMode {
        match self.mode {
            TlsMode::Require if self.files.ca_file.is_some() => TlsMode::VerifyCa,
            mode => mode,
        }
    }

    /// The roots a chain is checked against: the CA file's certificates or
    /// the system's.
    pub fn root_certificates(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        match &self.files.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("{}: holds no PEM certificate", path.display()));
                }
                Ok(certs)
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                    return Err(format!("no system CA certificates found{why}; set tls_ca_file"));
                }
                Ok(found.certs)
            }
        }
    }

    /// A rustls client config for this connection; `None` when TLS is off.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        if self.mode == TlsMode::Disable {
            return Ok(None);
        }
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let effective = self.effective();
        let builder = if effective.verifies_chain() {
            let mut roots = RootCertStore::empty();
            let (_, ignored) = roots.add_parsable_certificates(self.root_certificates()?);
            if roots.is_empty() {
                return Err(format!("none of the {ignored} CA certificates could be used"));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Verifier {
                check_name: effective == TlsMode::VerifyFull,
                webpki: Some(webpki),
                algorithms: provider.signature_verification_algorithms,
            }))
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Verifier {
                check_name: false,
                webpki: None,
                algorithms: provider.signature_verification_algorithms,
            }))
        };
        let config = match (&self.files.client_cert_file, &self.files.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("{}: cannot read PEM certificates: {e}", cert.display()))?;
                // The key's own parse error never quotes key material.
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: cannot read a PEM private key: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!("{} and {}: not a usable certificate and key: {e}", cert.display(), key.display())
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }
}

/// The crypto provider every TLS connection of lessor's uses.
pub fn provider() -> Arc<CryptoProvider> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // Drivers that build their own rustls config (mysql_async) take the
    // process default; the first caller sets it, later calls find it set.
    let _ = CryptoProvider::install_default(rustls::crypto::aws_lc_rs::default_provider());
    provider
}

/// Whether `host` (a name, an address or a Unix socket path) stays on this
/// machine: `localhost`, a loopback address, or a socket.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The server-certificate check for one mode: the WebPKI chain check (with
/// or without the name), or none; handshake signatures are always checked.
struct Verifier {
    check_name: bool,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("check_chain", &self.webpki.is_some())
            .field("check_name", &self.check_name)
            .finish()
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed TLS handshake means, in words, if `err` (or anything in
/// its chain, through `io::Error`s) is one; `None` for other failures.
pub fn explain(err: &(dyn StdError + 'static)) -> Option<String> {
    find_rustls(err).map(describe)
}

/// Whether `err` is a certificate that is not valid for the name connected to.
pub fn is_name_mismatch(err: &(dyn StdError + 'static)) -> bool {
    matches!(
        find_rustls(err),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    )
}

/// The rustls error in `err`'s chain, looking inside `io::Error`s too.
fn find_rustls<'e>(err: &'e (dyn StdError + 'static)) -> Option<&'e rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_rustls(inner))
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// Text a server (or whoever answers in its place) chose, made fit for a
/// log line or an error: control characters dropped, at most 200 characters.
pub fn server_text(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    clean
}

fn describe(err: &rustls::Error) -> String {
    use CertificateError as C;
    let cert = match err {
        rustls::Error::InvalidCertificate(c) => c,
        rustls::Error::AlertReceived(alert) => {
            return format!(
                "the server ended the handshake ({alert:?}); it may require a client certificate (tls_client_cert_file) or a TLS version or cipher lessor does not offer"
            )
        }
        other => return format!("TLS handshake failed: {other}"),
    };
    match cert {
        C::UnknownIssuer => "the server's certificate was not issued by a trusted CA (unknown issuer); set tls_ca_file to the CA that signed it".into(),
        C::NotValidForName => "the server's certificate is not valid for the host connected to (name mismatch)".into(),
        C::NotValidForNameContext { expected, presented } => format!(
            "the server's certificate is not valid for {} (name mismatch: it names {})",
            server_name(expected),
            if presented.is_empty() { "no host".to_string() } else { presented.iter().map(|n| bare_name(n)).collect::<Vec<_>>().join(", ") }
        ),
        C::Expired | C::ExpiredContext { .. } => "the server's certificate has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "the server's certificate is not valid yet (check the clocks)".into(),
        C::BadSignature => "the server's certificate has a bad signature".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => "the server's certificate is not for TLS servers (extended key usage)".into(),
        other => format!("the server's certificate was refused: {other:?}"),
    }
}

/// `DnsName("localhost")` → `localhost`, `IpAddress(127.0.0.1)` →
/// `127.0.0.1`: rustls reports the names a certificate presents in Debug form.
fn bare_name(presented: &str) -> &str {
    for prefix in ["DnsName(\"", "IpAddress("] {
        if let Some(inner) = presented.strip_prefix(prefix) {
            return inner.trim_end_matches(')').trim_end_matches('"');
        }
    }
    presented
}

fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests;
