//! A connection served by an external plugin: [`Remote`] implements the
//! same [`Plugin`] trait as a built-in one, each method one call of the
//! plugin protocol, so the broker, rotation and tidy cannot tell the two
//! apart (and keep every guarantee they give a built-in plugin).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lessor_plugin::proto::{self, v1, v1::plugin_client::PluginClient};
use lessor_plugin::{
    BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created, LeaseRef, Plugin,
    PluginError, RoleSettings, CANCEL_GRACE,
};
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::host::{Host, Spec, State};

/// How much earlier than the deadline a call may end and still count as
/// having run out of time (timers are not exact).
const DEADLINE_SLACK: Duration = Duration::from_millis(500);

/// One connection of an external plugin.
#[derive(Debug)]
pub struct Remote {
    host: Arc<Host>,
    connection: String,
    /// The plugin's name from the config, for `plugin = "…"` and messages.
    name: &'static str,
    described: RwLock<Described>,
    /// Every call's deadline: `operation_timeout`, plus the grace a
    /// plugin has to stop its backend work and say so.
    deadline: Duration,
}

/// What `Configure` said the plugin does on this connection.
#[derive(Debug, Clone)]
struct Described {
    capabilities: Capabilities,
    static_strategies: &'static [&'static str],
    revokes_in_batches: bool,
    admin_username: Option<String>,
    admin_key_id: Option<String>,
}

/// A role of an external plugin: its options, sent with every call (the
/// plugin keeps nothing), and what checking them said.
#[derive(Debug)]
struct RemoteRole {
    wire: v1::Role,
    capabilities: Option<Capabilities>,
}

fn capabilities(c: Option<v1::Capabilities>) -> Option<Capabilities> {
    c.map(|c| Capabilities {
        renewable: c.renewable,
        revocable: c.revocable,
        max_username_len: c.max_username_len as usize,
    })
}

/// The strategies lessor knows, as the `'static` names the trait hands out.
fn strategies(names: &[String]) -> &'static [&'static str] {
    const KNOWN: [&str; 4] = ["single", "alternating", "dual_password", "access_key"];
    let chosen: Vec<&'static str> = KNOWN.iter().copied().filter(|k| names.iter().any(|n| n == k)).collect();
    super::intern_list(chosen)
}

impl Described {
    fn from_wire(answer: &v1::ConfigureResponse) -> Self {
        Self {
            capabilities: capabilities(answer.capabilities).unwrap_or(Capabilities {
                renewable: false,
                revocable: true,
                max_username_len: 63,
            }),
            static_strategies: strategies(&answer.static_strategies),
            revokes_in_batches: answer.revokes_in_batches,
            admin_username: answer.admin_username.clone(),
            admin_key_id: answer.admin_key_id.clone(),
        }
    }
}

impl Remote {
    /// Builds `context`'s connection in the plugin's process.
    pub fn configure(host: Arc<Host>, context: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let key = format!("connections.{}", context.name);
        let spec = Spec {
            url: context.url.map(str::to_string),
            password: context.password,
            admin: None,
            max_connections: context.max_connections.try_into().unwrap_or(u32::MAX),
            operation_timeout_ms: context.operation_timeout.as_millis().try_into().unwrap_or(u64::MAX),
            options_json: proto::options_to_json(context.options),
        };
        let answer = host.configure(context.name, spec).map_err(|e| {
            ConfigError::new(format!("{key}.plugin"), format!("plugin {:?}: {e}", host.name()))
        })?;
        if let Some(e) = super::configure_error(&key, &answer) {
            return Err(e);
        }
        Ok(Self {
            name: super::intern(host.name()),
            connection: context.name.to_string(),
            described: RwLock::new(Described::from_wire(&answer)),
            deadline: context.operation_timeout + CANCEL_GRACE,
            host,
        })
    }

    fn described(&self) -> Described {
        self.described.read().unwrap().clone()
    }

    fn down(&self, why: impl Into<String>) -> PluginError {
        PluginError::Down { plugin: self.name.to_string(), message: why.into() }
    }

    /// One call: refused at once while the process is down, bounded by
    /// the deadline (sent to the plugin, which drops the call when it
    /// passes), timed for the metrics.
    async fn call<T, R, F, Fut>(&self, operation: &'static str, message: T, send: F) -> Result<R, PluginError>
    where
        F: FnOnce(PluginClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let client = match self.host.state() {
            State::Running { client, .. } => client,
            State::Restarting { reason, .. } => {
                return Err(
                    self.down(format!("not running ({reason}); it is being restarted, try again shortly"))
                )
            }
            State::Stopped => return Err(self.down("lessor is shutting down")),
        };
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        let started = Instant::now();
        // The plugin's own deadline ends the call first; this one is for a
        // peer that stops reading altogether.
        let answer =
            tokio::time::timeout(self.deadline + Duration::from_secs(1), send(client, request)).await;
        let took = started.elapsed();
        crate::metrics::plugin_call(self.name, operation, took);
        let no_answer = || PluginError::Unavailable {
            message: format!(
                "plugin {:?} did not answer {operation} within {:?}; the call was cancelled",
                self.name, self.deadline
            ),
        };
        match answer {
            Err(_) => Err(no_answer()),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(match status.code() {
                // The deadline passed: the plugin did not answer in time.
                // Before it, a cancelled call is the connection going
                // away under it (the process died mid-call).
                Code::DeadlineExceeded | Code::Cancelled if took + DEADLINE_SLACK >= self.deadline => {
                    no_answer()
                }
                Code::Unimplemented => PluginError::Unsupported { operation },
                // Errors are data in the protocol: any other status is the
                // process or the socket failing (a crash mid-call, say).
                _ => self.down(format!("{operation} failed: {}", status.message())),
            }),
        }
    }

    /// A call answering [`v1::Outcome`].
    async fn outcome<T, F, Fut>(
        &self,
        operation: &'static str,
        message: T,
        send: F,
    ) -> Result<(), PluginError>
    where
        F: FnOnce(PluginClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<v1::Outcome>, Status>>,
    {
        match self.call(operation, message, send).await?.error {
            Some(e) => Err(proto::error_from_wire(e, operation)),
            None => Ok(()),
        }
    }

    fn role(settings: &RoleSettings) -> Result<&RemoteRole, PluginError> {
        lessor_plugin::downcast_role::<RemoteRole>(settings)
    }

    fn lease(lease: &LeaseRef<'_>) -> Result<v1::Lease, PluginError> {
        Ok(v1::Lease {
            lease_id: lease.lease_id.to_string(),
            role_name: lease.role.to_string(),
            role: lease.settings.map(Self::role).transpose()?.map(|r| r.wire.clone()),
            username: lease.username.to_string(),
            plugin_data_json: lease.plugin_data.map(|d| d.to_string()),
        })
    }

    fn connection(&self) -> String {
        self.connection.clone()
    }

    fn password(&self, username: &str, password: &SecretString) -> v1::PasswordRequest {
        v1::PasswordRequest {
            connection: self.connection(),
            username: username.to_string(),
            password: password.expose_secret().to_string(),
        }
    }
}

#[async_trait]
impl Plugin for Remote {
    fn name(&self) -> &'static str {
        self.name
    }

    fn capabilities(&self) -> Capabilities {
        self.described().capabilities
    }

    fn role_capabilities(&self, settings: &RoleSettings) -> Capabilities {
        Self::role(settings).ok().and_then(|r| r.capabilities).unwrap_or_else(|| self.capabilities())
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        self.described().static_strategies
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        let wire = v1::Role { name: role.to_string(), options_json: proto::options_to_json(options) };
        let request = v1::CheckRoleRequest { connection: self.connection(), role: Some(wire.clone()) };
        let key = format!("roles.{role}");
        let answer = self.blocking(request, |mut c, r| async move { c.check_role(r).await });
        let answer = answer.map_err(|e| ConfigError::new(&key, format!("plugin {:?}: {e}", self.name)))?;
        if let Some(e) = super::joined(&answer.config_errors) {
            return Err(e);
        }
        if let Some(e) = answer.error {
            return Err(ConfigError::new(key, format!("plugin {:?}: {}", self.name, e.message)));
        }
        Ok(Arc::new(RemoteRole { wire, capabilities: capabilities(answer.capabilities) }))
    }

    fn check_ttls(
        &self,
        role: &str,
        settings: &RoleSettings,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<(), ConfigError> {
        let key = format!("roles.{role}");
        let remote = Self::role(settings).map_err(|e| ConfigError::new(&key, e.to_string()))?;
        let request = v1::CheckTtlsRequest {
            connection: self.connection(),
            role: Some(remote.wire.clone()),
            default_ttl_ms: default_ttl.as_millis().try_into().unwrap_or(u64::MAX),
            max_ttl_ms: max_ttl.as_millis().try_into().unwrap_or(u64::MAX),
        };
        match self.blocking(request, |mut c, r| async move { c.check_ttls(r).await }) {
            Ok(v1::Outcome { error: None }) => Ok(()),
            Ok(v1::Outcome { error: Some(e) }) => match proto::error_from_wire(e, "check_ttls") {
                PluginError::Unsupported { .. } => Ok(()),
                e => Err(ConfigError::new(format!("{key}.max_ttl"), e.to_string())),
            },
            Err(e) => Err(ConfigError::new(key, format!("plugin {:?}: {e}", self.name))),
        }
    }

    async fn verify(&self) -> Result<(), PluginError> {
        let request = v1::ConnectionRequest { connection: self.connection() };
        self.outcome("verify", request, |mut c, r| async move { c.verify(r).await }).await
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let message = v1::CreateRequest {
            connection: self.connection(),
            role: Some(Self::role(request.settings)?.wire.clone()),
            lease_id: request.lease_id.to_string(),
            username: request.username.to_string(),
            password: request.password.expose_secret().to_string(),
            expires_at_ms: proto::time_to_ms(request.expires_at),
        };
        let answer = self.call("create", message, |mut c, r| async move { c.create(r).await }).await?;
        if let Some(e) = answer.error {
            return Err(proto::error_from_wire(e, "create"));
        }
        let plugin_data = answer
            .plugin_data_json
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| PluginError::Internal { message: format!("plugin data is not JSON: {e}") })?;
        Ok(Created {
            credential: proto::credential_from_wire(answer.credential)?,
            plugin_data,
            expires_at: answer.expires_at_ms.map(proto::ms_to_time).transpose()?,
        })
    }

    async fn renew(&self, lease: &LeaseRef<'_>, expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        let message = v1::RenewRequest {
            connection: self.connection(),
            lease: Some(Self::lease(lease)?),
            expires_at_ms: proto::time_to_ms(expires_at),
        };
        self.outcome("renew", message, |mut c, r| async move { c.renew(r).await }).await
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        let message = v1::RevokeRequest { connection: self.connection(), lease: Some(Self::lease(lease)?) };
        self.outcome("revoke", message, |mut c, r| async move { c.revoke(r).await }).await
    }

    fn revokes_in_batches(&self) -> bool {
        self.described().revokes_in_batches
    }

    async fn revoke_batch(&self, leases: &[LeaseRef<'_>]) -> Result<(), PluginError> {
        let message = v1::RevokeBatchRequest {
            connection: self.connection(),
            leases: leases.iter().map(Self::lease).collect::<Result<_, _>>()?,
        };
        self.outcome("revoke_batch", message, |mut c, r| async move { c.revoke_batch(r).await }).await
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        let message = v1::ListUsersRequest { connection: self.connection(), prefix: prefix.to_string() };
        let answer =
            self.call("list_users", message, |mut c, r| async move { c.list_users(r).await }).await?;
        if let Some(e) = answer.error {
            return Err(proto::error_from_wire(e, "list_users"));
        }
        answer
            .users
            .into_iter()
            .map(|u| {
                Ok(BackendUser {
                    name: u.name,
                    created_at: u.created_at_ms.map(proto::ms_to_time).transpose()?,
                })
            })
            .collect()
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let message = self.password(username, password);
        self.outcome("set_password", message, |mut c, r| async move { c.set_password(r).await }).await
    }

    async fn add_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let message = self.password(username, password);
        self.outcome("add_password", message, |mut c, r| async move { c.add_password(r).await }).await
    }

    async fn remove_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let message = self.password(username, password);
        self.outcome("remove_password", message, |mut c, r| async move { c.remove_password(r).await }).await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let message = self.password(username, password);
        self.outcome("test_login", message, |mut c, r| async move { c.test_login(r).await }).await
    }

    async fn end_sessions(&self, username: &str) -> Result<(), PluginError> {
        let message = v1::UserRequest { connection: self.connection(), username: username.to_string() };
        self.outcome("end_sessions", message, |mut c, r| async move { c.end_sessions(r).await }).await
    }

    async fn create_key(
        &self,
        username: &str,
        keep: Option<&[String]>,
    ) -> Result<(String, SecretString), PluginError> {
        let message = v1::CreateKeyRequest {
            connection: self.connection(),
            username: username.to_string(),
            keep: keep.map(|k| v1::KeyList { key_ids: k.to_vec() }),
        };
        let answer =
            self.call("create_key", message, |mut c, r| async move { c.create_key(r).await }).await?;
        match answer.error {
            Some(e) => Err(proto::error_from_wire(e, "create_key")),
            None => Ok((answer.key_id, SecretString::from(answer.secret))),
        }
    }

    async fn test_key(&self, key_id: &str, secret: &SecretString) -> Result<(), PluginError> {
        let message = v1::TestKeyRequest {
            connection: self.connection(),
            key_id: key_id.to_string(),
            secret: secret.expose_secret().to_string(),
        };
        self.outcome("test_key", message, |mut c, r| async move { c.test_key(r).await }).await
    }

    async fn delete_key(&self, username: &str, key_id: &str) -> Result<(), PluginError> {
        let message = v1::DeleteKeyRequest {
            connection: self.connection(),
            username: username.to_string(),
            key_id: key_id.to_string(),
        };
        self.outcome("delete_key", message, |mut c, r| async move { c.delete_key(r).await }).await
    }

    fn admin_username(&self) -> Option<String> {
        self.described().admin_username
    }

    fn admin_key_id(&self) -> Option<String> {
        self.described().admin_key_id
    }

    fn use_admin_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        let mut spec = self
            .host
            .shared
            .connections
            .lock()
            .unwrap()
            .get(&self.connection)
            .cloned()
            .ok_or_else(|| PluginError::Internal { message: "connection not configured".into() })?;
        spec.admin = Some(username.to_string());
        spec.password = Some(password.clone());
        let answer = self.host.configure(&self.connection, spec).map_err(|e| self.down(e))?;
        if let Some(e) = answer.error {
            return Err(proto::error_from_wire(e, "use_admin_password"));
        }
        if let Some(e) = answer.config_errors.first() {
            return Err(PluginError::Internal { message: format!("{}: {}", e.key, e.message) });
        }
        *self.described.write().unwrap() = Described::from_wire(&answer);
        Ok(())
    }

    async fn revoke_sessions(
        &self,
        role: &str,
        settings: &RoleSettings,
    ) -> Result<serde_json::Value, PluginError> {
        let _ = role;
        let message = v1::RevokeSessionsRequest {
            connection: self.connection(),
            role: Some(Self::role(settings)?.wire.clone()),
        };
        let answer = self
            .call("revoke_sessions", message, |mut c, r| async move { c.revoke_sessions(r).await })
            .await?;
        if let Some(e) = answer.error {
            return Err(proto::error_from_wire(e, "revoke_sessions"));
        }
        serde_json::from_str(&answer.result_json)
            .map_err(|e| PluginError::Internal { message: format!("revoke_sessions answered no JSON: {e}") })
    }
}

impl Remote {
    /// The running process's client, or why there is none.
    fn host_client(&self) -> Result<PluginClient<Channel>, String> {
        match self.host.state() {
            State::Running { client, .. } => Ok(client),
            State::Restarting { reason, .. } => Err(format!("not running: {reason}")),
            State::Stopped => Err("stopped".into()),
        }
    }

    /// One call from synchronous code (the config load), run on the
    /// host's runtime and waited for here, bounded like any call.
    fn blocking<T, R, F, Fut>(&self, message: T, send: F) -> Result<R, String>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(PluginClient<Channel>, Request<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<R>, Status>> + Send + 'static,
    {
        let client = self.host_client();
        let deadline = self.deadline;
        self.host.wait(async move {
            let mut request = Request::new(message);
            request.set_timeout(deadline);
            send(client?, request).await.map(Response::into_inner).map_err(|s| s.message().to_string())
        })
    }
}
