//! `lessor serve`: builds each component from its config section
//! ([`build`]), wires store, broker and API together, owns the socket
//! file, and shuts everything down in order.
//!
//! The socket is bound and answering `health` ("starting") before the
//! start-up recovery scan runs, so a large backlog of leases never delays
//! the daemon becoming reachable. Under systemd the sockets may be passed
//! in instead (socket activation), and the service manager hears
//! `READY=1` once the scan is done (`crate::systemd`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::{bail, Context};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::broker::Broker;
use crate::config::{self, Checked, ConfigErrors};
use crate::external::Hosts;
use crate::policy::Policies;
use crate::seal::Sealer;
use crate::setup::{Connection, Role, Setup};
use crate::store::{LeaseStore, SqliteStore};

/// How `lessor serve` was invoked.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file; required unless `dev`.
    pub config: Option<PathBuf>,
    /// Run with an embedded store in `./.lessor-dev` and demo roles.
    pub dev: bool,
    /// Overrides `server.socket` (`--socket`, `LESSOR_SOCKET`).
    pub socket: Option<PathBuf>,
}

/// The folder `serve --dev` keeps its store and socket in.
pub const DEV_DIR: &str = ".lessor-dev";

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    init_logging();
    // First: the descriptors are this process's alone from here on.
    let inherited = crate::systemd::Inherited::take()?;
    let mut config = if options.dev {
        dev_config().await?
    } else {
        let path = options.config.as_deref().context("--config FILE is required (or use --dev)")?;
        load(path).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    if let Some(socket) = options.socket {
        config.config.server.socket = socket;
    }
    if options.dev {
        config.policies = config.policies.opened();
        config.config.socket_mode = 0o666;
        warn!("dev server: every local user may issue credentials and read static accounts");
    }
    let shutdown = CancellationToken::new();
    let handle = start_with(config, shutdown.clone(), inherited).await?;
    if options.dev {
        eprintln!(
            "lessor dev server listening on {}\n  export LESSOR_SOCKET={}\n  lessor creds dev_pg --format env",
            handle.socket.display(),
            handle.socket.display()
        );
    }
    wait_for_signal().await;
    info!("shutting down");
    crate::systemd::notify::stopping();
    shutdown.cancel();
    handle.stopped().await;
    Ok(())
}

/// A running daemon: its socket path and the task serving it.
#[derive(Debug)]
pub struct Running {
    pub socket: PathBuf,
    pub broker: Arc<Broker>,
    server: tokio::task::JoinHandle<()>,
    /// The socket files this daemon made (not the service manager's),
    /// removed when it stops.
    owned: Vec<PathBuf>,
}

impl Running {
    /// Waits for the server and background work to end after shutdown was
    /// requested; gives in-flight revocations a few seconds.
    pub async fn stopped(self) {
        let _ = self.server.await;
        self.broker.tasks().close();
        if tokio::time::timeout(StdDuration::from_secs(10), self.broker.tasks().wait()).await.is_err() {
            warn!("background tasks still running at shutdown; they resume at the next start");
        }
        for path in &self.owned {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reads a config file and builds everything the daemon runs on from it;
/// the error lists every problem, each with the file and dotted key.
pub fn load(path: &Path) -> Result<Setup, ConfigErrors> {
    build(config::read(path)?)
}

/// [`load`] for config text; `source` names it in messages.
pub fn load_str(text: &str, source: &str) -> Result<Setup, ConfigErrors> {
    build(config::parse(text, source)?)
}

/// Builds each component's runtime form from its section of a checked
/// config: connections' plugins, roles on their plugin, the plugin's checks
/// of static accounts, the seal key, the policies. Every build step runs
/// whatever the check found, except where it would only repeat a problem
/// already reported (a role's TTLs, a static account's usernames, an
/// entry whose name is invalid); the errors of both steps are returned
/// together.
pub fn build(checked: Checked) -> Result<Setup, ConfigErrors> {
    let config = &checked.config;
    let (hosts, mut errors) = Hosts::start(&config.plugins);
    let mut connections = BTreeMap::new();
    for (name, section) in &config.connections {
        // A plugin whose table is wrong, or that did not start, is already
        // reported; its connections would only repeat it.
        let named = &section.plugin;
        if checked.has_error_at(&format!("plugins.{named}"))
            || (config.plugins.contains_key(named) && hosts.get(named).is_none())
        {
            continue;
        }
        match Connection::build(name, section, config.tidy.get(name).cloned(), &hosts) {
            Ok(connection) => {
                connections.insert(name.clone(), connection);
            }
            Err(e) => errors.push(e),
        }
    }
    let mut roles = BTreeMap::new();
    for (name, section) in &config.roles {
        let Some(connection) = connections.get(&section.connection) else { continue };
        if !config::is_valid_name(name) {
            continue;
        }
        let key = format!("roles.{name}");
        let ttls_valid = !checked.has_error_at(&format!("{key}.default_ttl"))
            && !checked.has_error_at(&format!("{key}.max_ttl"));
        match Role::build(name, section, connection, ttls_valid) {
            Ok(role) => {
                roles.insert(name.clone(), role);
            }
            Err(e) => errors.extend(e),
        }
    }
    for (name, account) in &config.static_accounts {
        let Some(connection) = connections.get(&account.connection) else { continue };
        if config::is_valid_name(name) && !checked.has_error_at(&format!("static_accounts.{name}.usernames"))
        {
            errors.extend(connection.check_static(account));
        }
    }
    let sealer = match &config.server.seal_key_file {
        Some(path) => Sealer::from_file(path)
            .map(Arc::new)
            .map_err(|e| errors.push(lessor_plugin::ConfigError::new("server.seal_key_file", e.to_string())))
            .ok(),
        None => None,
    };
    let policies = Policies::from_config(
        &config.policies,
        config.server.admins.as_deref(),
        config.roles.keys(),
        config.static_accounts.keys(),
    )
    .map_err(|e| errors.extend(e))
    .ok();
    let Checked { config, errors: mut found } = checked;
    found.extend(errors);
    let setup = match policies {
        Some(policies) if found.is_empty() => Setup { config, connections, roles, sealer, policies, hosts },
        _ => return Err(ConfigErrors { file: config.source, errors: found }),
    };
    // Built again when the daemon starts; here for its problems.
    match crate::systemd::Credentials::from_setup(&setup) {
        Ok(_) => Ok(setup),
        Err(errors) => Err(ConfigErrors { file: setup.config.source.clone(), errors }),
    }
}

/// The lease store `server.store` names: SQLite, or PostgreSQL with its
/// password from `store_password_file` / `store_password_env`.
async fn open_store(config: &config::ValidatedConfig) -> anyhow::Result<Arc<dyn LeaseStore>> {
    let server = &config.server;
    let url = server.store.clone();
    if url.starts_with("sqlite://") {
        let store = tokio::task::spawn_blocking(move || SqliteStore::open_url(&url)).await??;
        return Ok(Arc::new(store));
    }
    let password = match (&server.store_password_file, &server.store_password_env) {
        (Some(file), _) => Some(
            lessor_plugin::files::read_secret(file)
                .map_err(|e| anyhow::anyhow!("server.store_password_file: {}: {e}", file.display()))?,
        ),
        (None, Some(var)) => Some(secrecy::SecretString::from(
            std::env::var(var).with_context(|| format!("server.store_password_env: {var} is not set"))?,
        )),
        (None, None) => None,
    };
    let node = server.node();
    let store = crate::store::PostgresStore::open(&url, password.as_ref(), &node)
        .await?
        .with_node_timeout(server.node_timeout.as_std());
    info!(store = ?store, "lease store on PostgreSQL");
    Ok(Arc::new(store))
}

/// Opens the store, binds the socket and starts serving. Returns once the
/// socket accepts connections.
pub async fn start(setup: Setup, shutdown: CancellationToken) -> anyhow::Result<Running> {
    start_with(setup, shutdown, crate::systemd::Inherited::default()).await
}

/// [`start`], serving the sockets the service manager passed in where it
/// passed them.
pub async fn start_with(
    mut setup: Setup,
    shutdown: CancellationToken,
    inherited: crate::systemd::Inherited,
) -> anyhow::Result<Running> {
    // Before anything records (the recorder is installed once per process).
    let exporter = crate::metrics::Exporter::new(crate::metrics::install());
    let store =
        open_store(&setup.config).await.with_context(|| format!("{}: server.store", setup.config.source))?;
    if let Some(cluster) = store.cluster() {
        // A lease's owner is a uid on the node that issued it.
        setup.policies = setup.policies.on_node(cluster.node());
    }
    let config = &setup.config;
    let mut owned = Vec::new();
    let (socket, listener) = match inherited.api {
        Some(listener) => {
            let path = crate::systemd::activation::path_of(&listener).unwrap_or(config.server.socket.clone());
            info!(socket = %path.display(), "serving the API socket the service manager passed in");
            (path, UnixListener::from_std(listener).context("the API socket passed in")?)
        }
        None => {
            let socket = config.server.socket.clone();
            let listener = bind_socket(&socket, config.socket_mode).await?;
            owned.push(socket.clone());
            (socket, listener)
        }
    };
    let credentials_listener = match (inherited.credentials, &config.server.credentials_socket) {
        (Some(listener), _) => {
            info!("serving the credentials socket the service manager passed in");
            Some(UnixListener::from_std(listener).context("the credentials socket passed in")?)
        }
        (None, Some(path)) => {
            // Only the service manager (root) is answered; nobody else
            // needs to reach it.
            let listener = bind_socket(path, 0o600)
                .await
                .with_context(|| format!("{}: server.credentials_socket", config.source))?;
            owned.push(path.clone());
            Some(listener)
        }
        (None, None) => {
            if !config.credentials.is_empty() {
                warn!(
                    "[credentials] are configured but no credentials socket is served: set \
                     server.credentials_socket, or start lessor with lessor-credentials.socket"
                );
            }
            None
        }
    };
    let audit = match config.server.audit_log.clone() {
        Some(path) => tokio::task::spawn_blocking(move || crate::audit::Audit::open(&path))
            .await?
            .with_context(|| format!("{}: server.audit_log", config.source))?,
        None => crate::audit::Audit::disabled(),
    };
    audit.spawn_reopen_on_sighup(shutdown.clone());
    let mut state = AppState::with_audit(&setup, store, shutdown.clone(), audit);
    state.metrics = Some(exporter.clone());
    let (broker, tidy, rotator) = (state.broker.clone(), state.tidy.clone(), state.rotator.clone());
    // Before the socket answers: an issuance counted now would be counted twice.
    broker
        .load_quotas()
        .await
        .with_context(|| format!("{}: counting leases for max_leases", config.source))?;
    log_access(&setup.policies);
    // Before any admin connection is made: a rotated admin password in the
    // store wins over the one in the config.
    rotator.restore_roots().await;
    for (name, connection) in &setup.connections {
        let plugin = connection.plugin.clone();
        let name = name.clone();
        tokio::spawn(async move {
            match plugin.verify().await {
                Ok(()) => info!(connection = %name, "backend reachable"),
                Err(e) => {
                    warn!(connection = %name, error = %e, "backend check failed; issuance will fail until it recovers")
                }
            }
        });
    }
    if let Some(listener) = credentials_listener {
        let credentials = crate::systemd::Credentials::from_setup(&setup)
            .map_err(|errors| anyhow::anyhow!(ConfigErrors { file: setup.config.source.clone(), errors }))?;
        let lifetimes =
            crate::systemd::units::Lifetimes::new(broker.clone(), state.policies.clone(), shutdown.clone());
        let server = Arc::new(crate::systemd::credentials::Server {
            credentials,
            broker: broker.clone(),
            rotator: rotator.clone(),
            policies: state.policies.clone(),
            audit: state.audit.clone(),
            lifetimes: lifetimes.clone(),
        });
        // Leases delivered before a restart are watched again once
        // recovery has put every lease back.
        let (ready, rebind_shutdown) = (broker.clone(), shutdown.clone());
        broker.tasks().spawn(async move {
            tokio::select! {
                _ = ready.wait_ready() => {}
                _ = rebind_shutdown.cancelled() => return,
            }
            let credentials = &server.credentials;
            lifetimes.rebind(|lease| credentials.increment(lease)).await;
            server.clone().serve(listener, rebind_shutdown).await;
        });
    }
    let app = api::router(state);
    let limits = api::listen::Limits::from_config(&config.server);
    let containers = config
        .containers
        .as_ref()
        .map(crate::containers::Containers::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.source))?;
    let server = tokio::spawn(api::listen::serve(listener, app, limits, containers, shutdown.clone()));
    broker.start();
    broker.tasks().spawn(exporter.upkeep(shutdown.clone()));
    rotator.start();
    crate::systemd::notify::start(broker.clone(), shutdown.clone());
    let ready = broker.clone();
    tidy.start(move || ready.is_ready(), broker.tasks(), shutdown.clone());
    info!(socket = %socket.display(), "listening");
    Ok(Running { socket, broker, server, owned })
}

/// Says at start-up who may do what, and how to grant more.
fn log_access(policies: &Policies) {
    if policies.is_open() {
        return;
    }
    if policies.is_empty() {
        warn!(
            "no [[policies]] configured: only admins (root and the daemon's own user, or server.admins) \
             may issue credentials; grant roles with e.g. [[policies]] name = \"web\" \
             match = {{ user = \"www-data\" }} allow = [\"creds:ROLE\"]"
        );
    } else {
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        info!(policies = %names.join(","), "access policies loaded");
    }
}

/// Connections the kernel queues for the accept loop.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Binds the Unix socket. A socket file left by a dead daemon is replaced;
/// one a live daemon answers on is refused, and so is anything at the path
/// that is not a socket: start-up never deletes what is not its own.
async fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: refusing to replace it (remove it, or set server.socket elsewhere)",
                path.display()
            );
        }
        match tokio::time::timeout(StdDuration::from_secs(2), UnixStream::connect(path)).await {
            Ok(Ok(_)) => bail!("another lessor is already listening on {}", path.display()),
            _ => {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
                info!(socket = %path.display(), "replaced a stale socket");
            }
        }
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // A deep backlog (the kernel caps it at net.core.somaxconn): a burst of
    // connections, or a flood the accept loop is refusing, then leaves room
    // for other callers' connects.
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket we own; raising the backlog of a listening
    // socket is allowed.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot raise the socket's listen backlog");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}

/// Crates whose debug and trace output can carry secrets: the database
/// drivers print statement text (a creation statement holds a password or
/// its SCRAM verifier), and the AWS SDK traces requests and responses with
/// signing material and session tokens in their headers.
const QUIET_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "deadpool_postgres",
    "mysql_async",
    "mysql_common",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_sts",
    "aws_sdk_iam",
    "aws_credential_types",
];

/// Whether an event may be logged whatever `LESSOR_LOG` says: anything
/// from a [`QUIET_TARGETS`] crate (or one of its modules) only at `warn`
/// and above.
fn allowed_whatever_the_filter(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    let quiet = QUIET_TARGETS.iter().any(|crate_name| {
        target.strip_prefix(crate_name).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !quiet || *meta.level() <= tracing::Level::WARN
}

/// Logs go to stderr, filtered by `LESSOR_LOG` (default `info`). The
/// [`QUIET_TARGETS`] are capped at `warn` by a second filter applied after
/// it, so no directive, however specific (`tokio_postgres::query=trace`),
/// can turn their statement logging on.
fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// `LESSOR_LOG` (default `info`), with the [`QUIET_TARGETS`] capped after it.
fn log_filter<S>() -> impl tracing_subscriber::layer::Filter<S> {
    use tracing_subscriber::filter;
    let env = tracing_subscriber::EnvFilter::try_from_env("LESSOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    filter::FilterExt::and(env, filter::filter_fn(allowed_whatever_the_filter))
}

/// Logging for `lessor plugin serve`: to stderr, each line starting with
/// its level and nothing before it (what the daemon's relay of a plugin's
/// stderr reads), the [`QUIET_TARGETS`] capped as in the daemon.
pub fn init_plugin_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The config of `serve --dev`: an embedded store and socket in
/// `./.lessor-dev`, and a demo role for a local PostgreSQL if one answers.
async fn dev_config() -> anyhow::Result<Setup> {
    let dir = std::env::current_dir()?.join(DEV_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Static-account secrets are sealed with a key made on first use.
    let seal_key = dir.join("seal.key");
    if !seal_key.exists() {
        crate::seal::write_new_key(&seal_key)
            .with_context(|| format!("cannot write {}", seal_key.display()))?;
        info!(file = %seal_key.display(), "made a seal key for the dev server");
    }
    let mut text = format!(
        "[server]\nsocket = {:?}\nstore = \"sqlite://{}\"\nsocket_mode = \"0600\"\nseal_key_file = {:?}\n",
        dir.join("lessor.sock"),
        dir.join("lessor.db").display(),
        seal_key,
    );
    let pg_up =
        tokio::time::timeout(StdDuration::from_secs(1), tokio::net::TcpStream::connect("127.0.0.1:5432"))
            .await;
    if matches!(pg_up, Ok(Ok(_))) {
        text.push_str(DEV_POSTGRES);
    } else {
        warn!("no PostgreSQL on 127.0.0.1:5432: the dev server has no roles");
    }
    load_str(&text, "(dev config)").map_err(|e| anyhow::anyhow!("{e}"))
}

const DEV_POSTGRES: &str = r#"
[connections.local_pg]
plugin = "postgres"
url = "postgres://postgres@127.0.0.1:5432/postgres"

[roles.dev_pg]
connection = "local_pg"
default_ttl = "1h"
max_ttl = "24h"
creation_statements = [
  "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
"#;

#[cfg(test)]
mod tests;
