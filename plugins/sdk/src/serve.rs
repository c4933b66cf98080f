//! Any [`Plugin`] as an external plugin: [`serve`] answers the plugin
//! protocol (`schemas/proto/lessor/plugin/v1/plugin.proto`) on the socket
//! lessor names, building one plugin per connection with the same
//! [`PluginFactory`] the broker would call in process. `lessor plugin serve
//! postgres` is this function around the built-in PostgreSQL plugin.
//!
//! The process keeps nothing lessor cannot give back: connections are
//! rebuilt from `Configure` after a restart, and a role's settings are
//! checked again from the options every call carries (and cached).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

use crate::proto::v1::plugin_server::{self, PluginServer};
use crate::proto::{self, v1};
use crate::{
    BackendUser, ConnectionContext, CreateRequest, LeaseRef, Plugin, PluginError, PluginFactory, RoleSettings,
};

/// Serves `factory`'s plugin on the socket named by
/// `LESSOR_PLUGIN_SOCKET`, prints the handshake line once it listens, and
/// returns when lessor closes the plugin's stdin or sends SIGTERM.
///
/// `name` is what `plugin = "…"` says; `version` is reported by `lessor
/// plugin list`. The caller sets up logging (to stderr, each line starting
/// with its level; see the protocol's header).
pub async fn serve(name: &'static str, version: &'static str, factory: PluginFactory) -> std::io::Result<()> {
    let Some(path) = std::env::var_os(proto::SOCKET_ENV) else {
        return Err(std::io::Error::other(format!(
            "{} is not set: an external plugin is started by lessor (see [plugins.NAME] in its config)",
            proto::SOCKET_ENV
        )));
    };
    let listener = tokio::net::UnixListener::bind(&path)?;
    let service = Service { name, version, factory, connections: RwLock::new(HashMap::new()) };
    let server = PluginServer::new(service)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("{}\n", proto::HANDSHAKE).as_bytes()).await?;
    stdout.flush().await?;
    let served = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            told_to_stop(),
        )
        .await;
    let _ = std::fs::remove_file(&path);
    served.map_err(std::io::Error::other)
}

/// Ends when stdin reaches its end (lessor closed it, or is gone) or on
/// SIGTERM / SIGINT.
async fn told_to_stop() {
    use tokio::io::AsyncReadExt;
    use tokio::signal::unix::{signal, SignalKind};
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        () = stdin_closed => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

struct Service {
    name: &'static str,
    version: &'static str,
    factory: PluginFactory,
    connections: RwLock<HashMap<String, Arc<Connection>>>,
}

/// One configured connection: its plugin, what it was built from, and the
/// settings of the roles seen so far.
struct Connection {
    plugin: Arc<dyn Plugin>,
    built_from: BuiltFrom,
    roles: Mutex<HashMap<(String, String), RoleSettings>>,
}

/// What a `Configure` builds a plugin from, bar the admin credential: a
/// `Configure` that changes only that is a rotated admin password, handed
/// to the plugin already built.
#[derive(PartialEq)]
struct BuiltFrom {
    url: Option<String>,
    options_json: String,
    max_connections: u32,
    operation_timeout_ms: u64,
}

impl Connection {
    /// The settings of `role`, checked by the plugin once per options.
    fn settings(&self, role: &v1::Role) -> Result<RoleSettings, PluginError> {
        let key = (role.name.clone(), role.options_json.clone());
        if let Some(settings) = self.roles.lock().unwrap().get(&key) {
            return Ok(settings.clone());
        }
        let options = proto::json_to_options(&role.options_json)
            .map_err(|e| PluginError::InvalidRole { message: format!("role {:?}: {e}", role.name) })?;
        let settings = self
            .plugin
            .check_role(&role.name, &options)
            .map_err(|e| PluginError::InvalidRole { message: e.to_string() })?;
        self.roles.lock().unwrap().insert(key, settings.clone());
        Ok(settings)
    }
}

fn unset(what: &str) -> PluginError {
    PluginError::Internal { message: format!("the request has no {what}") }
}

/// A lease off the wire, owning what [`LeaseRef`] borrows.
struct OwnedLease {
    lease_id: String,
    role: String,
    settings: Option<RoleSettings>,
    username: String,
    plugin_data: Option<serde_json::Value>,
}

impl OwnedLease {
    fn from_wire(connection: &Connection, lease: Option<v1::Lease>) -> Result<Self, PluginError> {
        let lease = lease.ok_or_else(|| unset("lease"))?;
        let settings = lease.role.as_ref().map(|r| connection.settings(r)).transpose()?;
        let plugin_data = lease
            .plugin_data_json
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| PluginError::Internal { message: format!("plugin data is not JSON: {e}") })?;
        Ok(Self {
            lease_id: lease.lease_id,
            role: lease.role_name,
            settings,
            username: lease.username,
            plugin_data,
        })
    }

    fn as_ref(&self) -> LeaseRef<'_> {
        LeaseRef {
            lease_id: &self.lease_id,
            role: &self.role,
            settings: self.settings.as_ref(),
            username: &self.username,
            plugin_data: self.plugin_data.as_ref(),
        }
    }
}

fn outcome(result: Result<(), PluginError>) -> Result<Response<v1::Outcome>, Status> {
    Ok(Response::new(v1::Outcome { error: result.err().as_ref().map(proto::error_to_wire) }))
}

impl Service {
    /// A call that names a user and a password: `op` on the connection's
    /// plugin, its outcome on the wire.
    async fn with_password<F, Fut>(
        &self,
        request: Request<v1::PasswordRequest>,
        op: F,
    ) -> Result<Response<v1::Outcome>, Status>
    where
        F: FnOnce(Arc<dyn Plugin>, String, SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<(), PluginError>>,
    {
        let r = request.into_inner();
        let password = SecretString::from(r.password);
        outcome(match self.connection(&r.connection) {
            Ok(connection) => op(connection.plugin.clone(), r.username, password).await,
            Err(e) => Err(e),
        })
    }

    fn connection(&self, name: &str) -> Result<Arc<Connection>, PluginError> {
        self.connections.read().unwrap().get(name).cloned().ok_or_else(|| PluginError::Unavailable {
            message: format!("connection {name:?} is not configured in this plugin process yet"),
        })
    }

    fn configure(&self, request: v1::ConfigureRequest) -> v1::ConfigureResponse {
        let key = format!("connections.{}", request.connection);
        let config_error = |key: String, message: String| v1::ConfigureResponse {
            config_errors: vec![v1::ConfigError { key, message }],
            ..Default::default()
        };
        let built_from = BuiltFrom {
            url: request.url.clone(),
            options_json: request.options_json.clone(),
            max_connections: request.max_connections,
            operation_timeout_ms: request.operation_timeout_ms,
        };
        let password = request.password.map(SecretString::from);
        let existing = self.connections.read().unwrap().get(&request.connection).cloned();
        let connection = match existing.filter(|c| c.built_from == built_from) {
            Some(connection) => connection,
            None => {
                let options = match proto::json_to_options(&request.options_json) {
                    Ok(options) => options,
                    Err(e) => return config_error(key, e),
                };
                let context = ConnectionContext {
                    name: &request.connection,
                    url: request.url.as_deref(),
                    password: password.clone(),
                    max_connections: request.max_connections.max(1) as usize,
                    operation_timeout: Duration::from_millis(request.operation_timeout_ms),
                    options: &options,
                };
                let plugin = match (self.factory)(context) {
                    Ok(plugin) => plugin,
                    Err(e) => return config_error(e.key, e.message),
                };
                let connection =
                    Arc::new(Connection { plugin, built_from, roles: Mutex::new(HashMap::new()) });
                self.connections.write().unwrap().insert(request.connection.clone(), connection.clone());
                connection
            }
        };
        let plugin = &connection.plugin;
        if let (Some(admin), Some(password)) = (&request.admin_username, &password) {
            if let Err(e) = plugin.use_admin_password(admin, password) {
                return v1::ConfigureResponse { error: Some(proto::error_to_wire(&e)), ..Default::default() };
            }
        }
        v1::ConfigureResponse {
            capabilities: Some(capabilities(plugin.capabilities())),
            static_strategies: plugin.static_strategies().iter().map(|s| s.to_string()).collect(),
            revokes_in_batches: plugin.revokes_in_batches(),
            admin_username: plugin.admin_username(),
            admin_key_id: plugin.admin_key_id(),
            ..Default::default()
        }
    }
}

fn capabilities(c: crate::Capabilities) -> v1::Capabilities {
    v1::Capabilities {
        renewable: c.renewable,
        revocable: c.revocable,
        max_username_len: c.max_username_len.try_into().unwrap_or(u32::MAX),
    }
}

#[tonic::async_trait]
impl plugin_server::Plugin for Service {
    async fn describe(
        &self,
        _: Request<v1::DescribeRequest>,
    ) -> Result<Response<v1::DescribeResponse>, Status> {
        Ok(Response::new(v1::DescribeResponse {
            name: self.name.into(),
            version: self.version.into(),
            protocol: proto::PROTOCOL_VERSION,
        }))
    }

    async fn configure(
        &self,
        request: Request<v1::ConfigureRequest>,
    ) -> Result<Response<v1::ConfigureResponse>, Status> {
        Ok(Response::new(Service::configure(self, request.into_inner())))
    }

    async fn check_role(
        &self,
        request: Request<v1::CheckRoleRequest>,
    ) -> Result<Response<v1::CheckRoleResponse>, Status> {
        let request = request.into_inner();
        let answer = (|| {
            let connection = self.connection(&request.connection)?;
            let role = request.role.ok_or_else(|| unset("role"))?;
            let options = proto::json_to_options(&role.options_json)
                .map_err(|e| PluginError::InvalidRole { message: e })?;
            Ok(match connection.plugin.check_role(&role.name, &options) {
                Ok(settings) => v1::CheckRoleResponse {
                    capabilities: Some(capabilities(connection.plugin.role_capabilities(&settings))),
                    ..Default::default()
                },
                Err(e) => v1::CheckRoleResponse {
                    config_errors: vec![v1::ConfigError { key: e.key, message: e.message }],
                    ..Default::default()
                },
            })
        })();
        Ok(Response::new(answer.unwrap_or_else(|e: PluginError| v1::CheckRoleResponse {
            error: Some(proto::error_to_wire(&e)),
            ..Default::default()
        })))
    }

    async fn check_ttls(
        &self,
        request: Request<v1::CheckTtlsRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        let request = request.into_inner();
        let result = (|| {
            let connection = self.connection(&request.connection)?;
            let role = request.role.ok_or_else(|| unset("role"))?;
            let settings = connection.settings(&role)?;
            connection
                .plugin
                .check_ttls(
                    &role.name,
                    &settings,
                    Duration::from_millis(request.default_ttl_ms),
                    Duration::from_millis(request.max_ttl_ms),
                )
                .map_err(|e| PluginError::InvalidRole { message: e.to_string() })
        })();
        outcome(result)
    }

    async fn verify(&self, request: Request<v1::ConnectionRequest>) -> Result<Response<v1::Outcome>, Status> {
        let connection = match self.connection(&request.into_inner().connection) {
            Ok(c) => c,
            Err(e) => return outcome(Err(e)),
        };
        outcome(connection.plugin.verify().await)
    }

    async fn create(
        &self,
        request: Request<v1::CreateRequest>,
    ) -> Result<Response<v1::CreateResponse>, Status> {
        let request = request.into_inner();
        let created = async {
            let connection = self.connection(&request.connection)?;
            let role = request.role.ok_or_else(|| unset("role"))?;
            let settings = connection.settings(&role)?;
            let password = SecretString::from(request.password);
            let create = CreateRequest {
                role: &role.name,
                settings: &settings,
                lease_id: &request.lease_id,
                username: &request.username,
                password: &password,
                expires_at: proto::ms_to_time(request.expires_at_ms)?,
            };
            connection.plugin.create(&create).await
        }
        .await;
        Ok(Response::new(match created {
            Ok(created) => v1::CreateResponse {
                error: None,
                credential: Some(proto::credential_to_wire(&created.credential)),
                plugin_data_json: created.plugin_data.map(|d| d.to_string()),
                expires_at_ms: created.expires_at.map(proto::time_to_ms),
            },
            Err(e) => v1::CreateResponse { error: Some(proto::error_to_wire(&e)), ..Default::default() },
        }))
    }

    async fn renew(&self, request: Request<v1::RenewRequest>) -> Result<Response<v1::Outcome>, Status> {
        let request = request.into_inner();
        outcome(
            async {
                let connection = self.connection(&request.connection)?;
                let lease = OwnedLease::from_wire(&connection, request.lease)?;
                connection.plugin.renew(&lease.as_ref(), proto::ms_to_time(request.expires_at_ms)?).await
            }
            .await,
        )
    }

    async fn revoke(&self, request: Request<v1::RevokeRequest>) -> Result<Response<v1::Outcome>, Status> {
        let request = request.into_inner();
        outcome(
            async {
                let connection = self.connection(&request.connection)?;
                let lease = OwnedLease::from_wire(&connection, request.lease)?;
                connection.plugin.revoke(&lease.as_ref()).await
            }
            .await,
        )
    }

    async fn revoke_batch(
        &self,
        request: Request<v1::RevokeBatchRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        let request = request.into_inner();
        outcome(
            async {
                let connection = self.connection(&request.connection)?;
                let leases = request
                    .leases
                    .into_iter()
                    .map(|l| OwnedLease::from_wire(&connection, Some(l)))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<LeaseRef<'_>> = leases.iter().map(OwnedLease::as_ref).collect();
                connection.plugin.revoke_batch(&refs).await
            }
            .await,
        )
    }

    async fn list_users(
        &self,
        request: Request<v1::ListUsersRequest>,
    ) -> Result<Response<v1::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let listed =
            async { self.connection(&request.connection)?.plugin.list_users(&request.prefix).await }.await;
        Ok(Response::new(match listed {
            Ok(users) => v1::ListUsersResponse {
                error: None,
                users: users
                    .into_iter()
                    .map(|BackendUser { name, created_at }| v1::BackendUser {
                        name,
                        created_at_ms: created_at.map(proto::time_to_ms),
                    })
                    .collect(),
            },
            Err(e) => v1::ListUsersResponse { error: Some(proto::error_to_wire(&e)), users: Vec::new() },
        }))
    }

    async fn set_password(
        &self,
        request: Request<v1::PasswordRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        self.with_password(request, |p, user, password| async move { p.set_password(&user, &password).await })
            .await
    }

    async fn add_password(
        &self,
        request: Request<v1::PasswordRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        self.with_password(request, |p, user, password| async move { p.add_password(&user, &password).await })
            .await
    }

    async fn remove_password(
        &self,
        request: Request<v1::PasswordRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        self.with_password(
            request,
            |p, user, password| async move { p.remove_password(&user, &password).await },
        )
        .await
    }

    async fn test_login(
        &self,
        request: Request<v1::PasswordRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        self.with_password(request, |p, user, password| async move { p.test_login(&user, &password).await })
            .await
    }

    async fn end_sessions(&self, request: Request<v1::UserRequest>) -> Result<Response<v1::Outcome>, Status> {
        let r = request.into_inner();
        outcome(async { self.connection(&r.connection)?.plugin.end_sessions(&r.username).await }.await)
    }

    async fn create_key(
        &self,
        request: Request<v1::CreateKeyRequest>,
    ) -> Result<Response<v1::CreateKeyResponse>, Status> {
        let r = request.into_inner();
        let keep = r.keep.map(|k| k.key_ids);
        let made =
            async { self.connection(&r.connection)?.plugin.create_key(&r.username, keep.as_deref()).await }
                .await;
        Ok(Response::new(match made {
            Ok((key_id, secret)) => v1::CreateKeyResponse {
                error: None,
                key_id,
                secret: secrecy::ExposeSecret::expose_secret(&secret).to_string(),
            },
            Err(e) => v1::CreateKeyResponse { error: Some(proto::error_to_wire(&e)), ..Default::default() },
        }))
    }

    async fn test_key(&self, request: Request<v1::TestKeyRequest>) -> Result<Response<v1::Outcome>, Status> {
        let r = request.into_inner();
        let secret = SecretString::from(r.secret);
        outcome(async { self.connection(&r.connection)?.plugin.test_key(&r.key_id, &secret).await }.await)
    }

    async fn delete_key(
        &self,
        request: Request<v1::DeleteKeyRequest>,
    ) -> Result<Response<v1::Outcome>, Status> {
        let r = request.into_inner();
        outcome(
            async { self.connection(&r.connection)?.plugin.delete_key(&r.username, &r.key_id).await }.await,
        )
    }

    async fn revoke_sessions(
        &self,
        request: Request<v1::RevokeSessionsRequest>,
    ) -> Result<Response<v1::RevokeSessionsResponse>, Status> {
        let r = request.into_inner();
        let done = async {
            let connection = self.connection(&r.connection)?;
            let role = r.role.ok_or_else(|| unset("role"))?;
            let settings = connection.settings(&role)?;
            connection.plugin.revoke_sessions(&role.name, &settings).await
        }
        .await;
        Ok(Response::new(match done {
            Ok(result) => v1::RevokeSessionsResponse { error: None, result_json: result.to_string() },
            Err(e) => {
                v1::RevokeSessionsResponse { error: Some(proto::error_to_wire(&e)), ..Default::default() }
            }
        }))
    }
}
