//! The one TLS connector of a connection: every connection the plugin opens
//! (the admin pool, a static account's login test, the cancel request of a
//! timed-out statement) goes through it, so all of them are encrypted and
//! verified alike.

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use lessor_plugin::tls::{self, TlsSettings};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_postgres::{AsyncMessage, CancelToken, Client, NoTls, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::debug;

/// TLS for one `[connections.NAME]`: the settings and, unless TLS is
/// disabled, the rustls connector built from them.
#[derive(Clone)]
pub struct PgTls {
    pub(crate) settings: TlsSettings,
    connector: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.settings.mode).finish_non_exhaustive()
    }
}

impl PgTls {
    /// Builds the connector; reads the CA and client files now, so a bad
    /// one fails at config load.
    pub(crate) fn new(settings: TlsSettings) -> Result<Self, String> {
        let connector = settings.client_config()?.map(MakeRustlsConnect::new);
        Ok(Self { settings, connector })
    }

    /// A pool manager whose connections use this TLS.
    pub fn manager(&self, config: tokio_postgres::Config) -> Manager {
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        match &self.connector {
            Some(tls) => Manager::from_config(config, tls.clone(), manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        }
    }

    /// Opens one connection outside the pool; its driver runs on a task of
    /// its own, which ends when the client is dropped.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        Ok(match &self.connector {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                (client, tokio::spawn(async move { drop(connection.await) }))
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                (client, tokio::spawn(async move { drop(connection.await) }))
            }
        })
    }

    /// Opens one connection outside the pool whose notifications
    /// (`LISTEN`) arrive on the returned channel; the channel closes when
    /// the connection does, which is how its owner learns it was lost.
    pub async fn connect_listening(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, UnboundedReceiver<Notification>), tokio_postgres::Error> {
        let (sender, notifications) = mpsc::unbounded_channel();
        let client = match &self.connector {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                tokio::spawn(forward_notifications(connection, sender));
                client
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(forward_notifications(connection, sender));
                client
            }
        };
        Ok((client, notifications))
    }

    /// Asks the server to cancel whatever `token`'s connection is running.
    /// The server does not answer a cancel request; the cancelled
    /// statement's own error is the answer, which the caller waits for.
    pub(crate) async fn cancel(&self, token: CancelToken) {
        let sent = match &self.connector {
            Some(tls) => token.cancel_query(tls.clone()).await,
            None => token.cancel_query(NoTls).await,
        };
        if let Err(e) = sent {
            debug!(error = %e, "sending the cancel request failed; the connection is closed instead");
        }
    }
}

/// Drives `connection`, handing its notifications to `sender`, until the
/// connection ends or nobody listens any more.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    sender: mpsc::UnboundedSender<Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(notification)) => {
                if sender.send(notification).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "listening connection lost");
                return;
            }
        }
    }
}

/// The TLS version and cipher of `client`'s session, as the server sees it
/// (`pg_stat_ssl`); `None` when the session is not encrypted.
pub(crate) async fn session(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await?;
    let ssl: bool = row.get(0);
    Ok(ssl.then(|| {
        let version: Option<String> = row.get(1);
        let cipher: Option<String> = row.get(2);
        format!("{} {}", version.unwrap_or_default(), cipher.unwrap_or_default())
    }))
}

/// Why `err` is a TLS failure, in words, if it is one.
pub(crate) fn failure(err: &tokio_postgres::Error) -> Option<String> {
    tls::explain(err)
}

/// For a PostgreSQL connection lessor makes outside the plugin (the lease
/// store): the URL without its TLS parameters, and the connector they ask
/// for, resolved as for a `[connections]` entry — libpq's `sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`, and full verification by default
/// towards a host that is not local.
pub fn for_url(url: &str) -> Result<(tokio_postgres::Config, PgTls), String> {
    let (rest, url_tls) = crate::config::split_tls_params(url)?;
    let pg: tokio_postgres::Config = rest.parse().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    let settings = url_tls
        .resolve(&crate::PgConnectionOptions::default(), &pg, &|field: &str| field.to_string())
        .map_err(|e| e.to_string())?;
    Ok((pg, PgTls::new(settings)?))
}
