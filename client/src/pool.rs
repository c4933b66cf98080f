//! Connection pools that follow a [`Keeper`](crate::keeper::Keeper): every
//! new connection logs in with the credential the keeper holds now, and the
//! recycle step (run when a connection is taken from the pool) retires a
//! connection opened with a credential the keeper has since replaced — the
//! old lease is about to be revoked, or a rotated account's previous
//! password is about to stop working. A connection in use is never closed
//! by the pool: it is retired when it comes back, so no query is cut off.
//!
//! The keeper publishes a replacement before the old credential stops
//! working (its drain, or a static account's overlap), which is the time
//! the pool has to move; with short queries it moves within one checkout
//! of each connection.
//!
//! - [`PgManager`] (feature `deadpool-postgres`): a deadpool manager of
//!   tokio-postgres connections, each a deadpool-postgres `ClientWrapper`
//!   (with its `prepare_cached`);
//! - [`MysqlManager`] (feature `mysql`): the same for mysql_async.

use std::sync::Arc;

use tokio::sync::watch;

use crate::keeper::Held;
use crate::types::Credential;

/// The keeper's current credential and its generation.
fn current(keeper: &watch::Receiver<Arc<Held>>) -> Arc<Held> {
    keeper.borrow().clone()
}

/// Why a pool could not open a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The keeper holds a credential of another kind (an AWS key).
    #[error("the keeper holds a credential that is not a database user's")]
    NotADatabaseCredential,
    /// The database refused or failed.
    #[cfg(feature = "deadpool-postgres")]
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The database refused or failed.
    #[cfg(feature = "mysql")]
    #[error(transparent)]
    Mysql(#[from] mysql_async::Error),
}

fn database_login(held: &Held) -> Result<(&str, &secrecy::SecretString), PoolError> {
    match &held.credential {
        Credential::Database { username, password } => Ok((username, password)),
        _ => Err(PoolError::NotADatabaseCredential),
    }
}

#[cfg(feature = "deadpool-postgres")]
pub use postgres::{PgConnection, PgManager, PgPool};

#[cfg(feature = "deadpool-postgres")]
mod postgres {
    use std::sync::Arc;

    use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
    use deadpool_postgres::ClientWrapper;
    use secrecy::ExposeSecret;
    use tokio::sync::watch;
    use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
    use tokio_postgres::Socket;

    use super::{current, database_login, PoolError};
    use crate::keeper::Held;

    /// A pooled tokio-postgres connection (it derefs to deadpool-postgres's
    /// `ClientWrapper`, and so to `tokio_postgres::Client`), with the
    /// generation of the credential it logged in with.
    #[derive(Debug)]
    pub struct PgConnection {
        client: ClientWrapper,
        /// The keeper's generation of the credential it logged in with.
        pub generation: u64,
        /// The user it logged in as.
        pub username: String,
    }

    impl std::ops::Deref for PgConnection {
        type Target = ClientWrapper;
        fn deref(&self) -> &ClientWrapper {
            &self.client
        }
    }

    /// A pool of [`PgConnection`]s.
    pub type PgPool = managed::Pool<PgManager>;

    /// Opens connections with the keeper's credential over `config` (host,
    /// port, database, options; its user and password are replaced).
    pub struct PgManager {
        config: tokio_postgres::Config,
        keeper: watch::Receiver<Arc<Held>>,
        connect: Box<dyn Fn(tokio_postgres::Config) -> ConnectFuture + Send + Sync>,
    }

    type ConnectFuture = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ClientWrapper, tokio_postgres::Error>> + Send>,
    >;

    impl std::fmt::Debug for PgManager {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PgManager").field("generation", &current(&self.keeper).generation).finish()
        }
    }

    impl PgManager {
        pub fn new<T>(config: tokio_postgres::Config, tls: T, keeper: watch::Receiver<Arc<Held>>) -> Self
        where
            T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
            T::Stream: Sync + Send,
            T::TlsConnect: Sync + Send,
            <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
        {
            let connect = move |config: tokio_postgres::Config| -> ConnectFuture {
                let tls = tls.clone();
                Box::pin(async move {
                    let (client, connection) = config.connect(tls).await?;
                    let task = tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Ok(ClientWrapper::new(client, task))
                })
            };
            Self { config, keeper, connect: Box::new(connect) }
        }
    }

    impl managed::Manager for PgManager {
        type Type = PgConnection;
        type Error = PoolError;

        async fn create(&self) -> Result<PgConnection, PoolError> {
            let held = current(&self.keeper);
            let (username, password) = database_login(&held)?;
            let mut config = self.config.clone();
            config.user(username).password(password.expose_secret());
            let client = (self.connect)(config).await?;
            Ok(PgConnection { client, generation: held.generation, username: username.to_string() })
        }

        async fn recycle(&self, conn: &mut PgConnection, _: &Metrics) -> RecycleResult<PoolError> {
            if conn.generation != current(&self.keeper).generation {
                return Err(RecycleError::message("its credential was replaced"));
            }
            if conn.client.is_closed() {
                return Err(RecycleError::message("the connection is closed"));
            }
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
pub use mysql::{MysqlConnection, MysqlManager, MysqlPool};

#[cfg(feature = "mysql")]
mod mysql {
    use std::sync::Arc;

    use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
    use secrecy::ExposeSecret;
    use tokio::sync::watch;

    use super::{current, database_login, PoolError};
    use crate::keeper::Held;

    /// A pooled mysql_async connection (it derefs to `mysql_async::Conn`),
    /// with the generation of the credential it logged in with.
    #[derive(Debug)]
    pub struct MysqlConnection {
        conn: mysql_async::Conn,
        pub generation: u64,
        pub username: String,
    }

    impl std::ops::Deref for MysqlConnection {
        type Target = mysql_async::Conn;
        fn deref(&self) -> &mysql_async::Conn {
            &self.conn
        }
    }

    impl std::ops::DerefMut for MysqlConnection {
        fn deref_mut(&mut self) -> &mut mysql_async::Conn {
            &mut self.conn
        }
    }

    /// A pool of [`MysqlConnection`]s.
    pub type MysqlPool = managed::Pool<MysqlManager>;

    /// Opens connections with the keeper's credential over `opts` (host,
    /// port, database; its user and password are replaced).
    pub struct MysqlManager {
        opts: mysql_async::Opts,
        keeper: watch::Receiver<Arc<Held>>,
    }

    impl std::fmt::Debug for MysqlManager {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MysqlManager").field("generation", &current(&self.keeper).generation).finish()
        }
    }

    impl MysqlManager {
        pub fn new(opts: mysql_async::Opts, keeper: watch::Receiver<Arc<Held>>) -> Self {
            Self { opts, keeper }
        }
    }

    impl managed::Manager for MysqlManager {
        type Type = MysqlConnection;
        type Error = PoolError;

        async fn create(&self) -> Result<MysqlConnection, PoolError> {
            let held = current(&self.keeper);
            let (username, password) = database_login(&held)?;
            let opts = mysql_async::OptsBuilder::from_opts(self.opts.clone())
                .user(Some(username))
                .pass(Some(password.expose_secret()));
            let conn = mysql_async::Conn::new(opts).await?;
            Ok(MysqlConnection { conn, generation: held.generation, username: username.to_string() })
        }

        async fn recycle(&self, conn: &mut MysqlConnection, _: &Metrics) -> RecycleResult<PoolError> {
            if conn.generation != current(&self.keeper).generation {
                return Err(RecycleError::message("its credential was replaced"));
            }
            Ok(())
        }
    }
}
