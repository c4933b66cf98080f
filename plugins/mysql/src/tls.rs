//! TLS for every connection the plugin opens (the admin pool, `KILL QUERY`,
//! a static account's login test): one set of `SslOpts` built from the
//! connection's [`TlsSettings`], so all are encrypted and verified alike.
//!
//! mysql_async builds its own rustls config from `SslOpts`; lessor gives it
//! the roots itself (the CA file, or the system's, never the driver's
//! bundled Mozilla list) and the client identity.
//!
//! `verify_ca` (a trusted chain, any name) needs one more step. The
//! driver's "skip the name check" looks for the text `NotValidForName` in
//! the error, which rustls no longer prints, so it checks the name after
//! all. Instead, the plugin makes one handshake of its own first, whose
//! verifier checks the chain only ([`certificate_name`]), reads a DNS name
//! the certificate carries, and has the driver verify every connection
//! against that name: still a full chain check on each connection. When
//! the server's certificate changes to one without that name, the next
//! name mismatch makes the plugin look again, once.

use std::sync::Arc;
use std::time::Duration;

use lessor_plugin::tls::{self, TlsMode, TlsSettings};
use mysql_async::consts::CapabilityFlags;
use mysql_async::prelude::Queryable;
use mysql_async::{ClientIdentity, Conn, SslOpts};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The driver's TLS options for `settings`; `None` when TLS is off. For
/// `verify_ca`, `server_name` is the name [`certificate_name`] found (until
/// then the driver checks the name connected to).
pub(crate) fn ssl_opts(settings: &TlsSettings, server_name: Option<&str>) -> Result<Option<SslOpts>, String> {
    if settings.mode == TlsMode::Disable {
        return Ok(None);
    }
    // Parses the CA, certificate and key now (the driver reads them only
    // at each connection), and makes the aws-lc-rs provider the process
    // default the driver builds on.
    settings.client_config()?;
    let mut ssl = SslOpts::default();
    let mode = settings.effective();
    if mode.verifies_chain() {
        // The driver refuses every connection if one root does not parse:
        // only the usable ones are handed over.
        let roots = settings
            .root_certificates()?
            .into_iter()
            .filter(|cert| webpki::anchor_from_trusted_cert(cert).is_ok())
            .map(|cert| cert.to_vec().into())
            .collect();
        ssl = ssl.with_root_certs(roots).with_disable_built_in_roots(true);
    } else {
        ssl = ssl.with_danger_accept_invalid_certs(true);
    }
    if let (TlsMode::VerifyCa, Some(name)) = (mode, server_name) {
        ssl = ssl.with_danger_tls_hostname_override(Some(name.to_string()));
    }
    if let (Some(cert), Some(key)) = (&settings.files.client_cert_file, &settings.files.client_key_file) {
        ssl = ssl.with_client_identity(Some(ClientIdentity::new(cert.clone().into(), key.clone().into())));
    }
    Ok(Some(ssl))
}

/// Why `err` is a failed TLS handshake, in words, if it is one.
pub(crate) fn failure(err: &mysql_async::Error) -> Option<String> {
    if let mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) = err {
        return Some("the server does not offer TLS (its have_ssl is not YES): give it a certificate (ssl_cert, ssl_key)".into());
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

/// A DNS name the server's certificate carries, from a TLS handshake whose
/// verifier checks the chain only (`verify_ca`): the server's greeting is
/// read, an `SSLRequest` sent, the handshake made, and the connection
/// closed without logging in. A wildcard name is returned as a name it
/// covers.
pub(crate) async fn certificate_name(
    host: &str,
    port: u16,
    settings: &TlsSettings,
    timeout: Duration,
) -> Result<String, String> {
    let probe = async {
        let config = settings.client_config()?.ok_or("TLS is disabled")?;
        let mut tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("cannot connect: {e}"))?;
        let greeting = read_packet(&mut tcp).await?;
        if !server_offers_tls(&greeting)? {
            return Err("the server does not offer TLS (have_ssl is not YES)".to_string());
        }
        let flags = CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SSL
            | CapabilityFlags::CLIENT_SECURE_CONNECTION;
        let mut request = vec![32, 0, 0, 1];
        request.extend_from_slice(&flags.bits().to_le_bytes());
        request.extend_from_slice(&(16u32 << 20).to_le_bytes());
        request.push(45); // utf8mb4_general_ci
        request.extend_from_slice(&[0; 23]);
        tcp.write_all(&request).await.map_err(|e| format!("cannot send the TLS request: {e}"))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| tls::explain(&e).unwrap_or_else(|| format!("TLS handshake failed: {e}")))?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("the server presented no certificate")?
            .clone();
        let cert = webpki::EndEntityCert::try_from(&certificate)
            .map_err(|e| format!("the server's certificate cannot be read: {e}"))?;
        let name = cert.valid_dns_names().next().map(|n| match n.strip_prefix("*.") {
            Some(domain) => format!("lessor-verify-ca.{domain}"),
            None => n.to_string(),
        });
        name.ok_or_else(|| {
            "the server's certificate names no DNS host in its subject alternative names, which verify_ca needs with this driver; use verify_identity, or give the server a certificate with a DNS name"
                .to_string()
        })
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| format!("no TLS handshake within {}s", timeout.as_secs()))?
}

/// Reads one protocol packet: a 3-byte length and a sequence number, then
/// the payload.
async fn read_packet(tcp: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut header = [0u8; 4];
    tcp.read_exact(&mut header).await.map_err(|e| format!("no greeting from the server: {e}"))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.map_err(|e| format!("a short greeting from the server: {e}"))?;
    Ok(payload)
}

/// Whether the server's greeting (protocol 10) sets `CLIENT_SSL`; an error
/// packet is the server's refusal, in its words.
fn server_offers_tls(greeting: &[u8]) -> Result<bool, String> {
    match greeting.first() {
        Some(0xff) => {
            let text = greeting.get(3..).map(String::from_utf8_lossy).unwrap_or_default();
            return Err(format!("the server refused the connection: {}", tls::server_text(&text)));
        }
        Some(10) => {}
        _ => return Err("the server's greeting is not MySQL protocol 10".into()),
    }
    // protocol, server version (NUL-terminated), thread id (4), scramble
    // (8), filler (1), then the low two bytes of the capability flags.
    let version_end = greeting[1..].iter().position(|b| *b == 0).ok_or("a malformed greeting")? + 1;
    let flags_at = version_end + 1 + 4 + 8 + 1;
    let low = greeting.get(flags_at..flags_at + 2).ok_or("a malformed greeting")?;
    Ok(u16::from_le_bytes([low[0], low[1]]) as u32 & CapabilityFlags::CLIENT_SSL.bits() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting(flags: u16) -> Vec<u8> {
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.19-MariaDB\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(b"scramble");
        g.push(0);
        g.extend_from_slice(&flags.to_le_bytes());
        g.extend_from_slice(&[0; 20]);
        g
    }

    #[test]
    fn the_greeting_says_whether_tls_is_offered() {
        assert_eq!(server_offers_tls(&greeting(0xffff)), Ok(true));
        assert_eq!(server_offers_tls(&greeting(!0x0800)), Ok(false));
        let refused = [0xff, 0x6a, 0x04, b'H', b'o', b's', b't'];
        assert!(server_offers_tls(&refused).unwrap_err().contains("refused the connection: Host"));
        assert!(server_offers_tls(&[9, 1, 2]).is_err());
        assert!(server_offers_tls(&[10, b'x']).is_err());
    }
}
