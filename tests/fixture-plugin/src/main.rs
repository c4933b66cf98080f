//! An external plugin for lessor's fault tests: the PostgreSQL plugin
//! served out of process (as `lessor plugin serve postgres` does), with
//! faults the test switches on through files in `LESSOR_FIXTURE_DIR`:
//!
//! - while `hang` exists there, `create` and `revoke` wait and never reach
//!   the backend (a plugin stuck on a call); the broker's deadline ends the
//!   call, and the plugin says `create cancelled` on stderr when its work
//!   is dropped;
//! - while `leak` exists there, `create` prints the password it received
//!   on stderr at DEBUG: a careless plugin, whose lines the broker must not
//!   relay at its default level.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lessor_plugin::{
    BackendUser, Capabilities, ConfigError, ConnectionContext, CreateRequest, Created, LeaseRef, Plugin,
    PluginError, RoleSettings,
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Plugin>,
    dir: PathBuf,
}

impl Faulty {
    fn on(&self, fault: &str) -> bool {
        self.dir.join(fault).exists()
    }

    /// Waits while `hang` exists.
    async fn hang(&self) {
        while self.on("hang") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Says `create cancelled` when dropped before [`Armed::disarm`]: the
/// call's work was dropped when its deadline passed.
struct Armed(bool);

impl Armed {
    fn disarm(mut self) {
        self.0 = false;
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if self.0 {
            eprintln!("INFO create cancelled");
        }
    }
}

#[async_trait]
impl Plugin for Faulty {
    fn name(&self) -> &'static str {
        "fixture"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn static_strategies(&self) -> &'static [&'static str] {
        self.inner.static_strategies()
    }

    fn check_role(&self, role: &str, options: &toml::Table) -> Result<RoleSettings, ConfigError> {
        self.inner.check_role(role, options)
    }

    async fn verify(&self) -> Result<(), PluginError> {
        self.inner.verify().await
    }

    async fn create(&self, request: &CreateRequest<'_>) -> Result<Created, PluginError> {
        let armed = Armed(true);
        if self.on("leak") {
            eprintln!("DEBUG create {} with password {}", request.username, request.password.expose_secret());
        }
        // After the leak: once this line is in lessor's log, so is the
        // leak if it was relayed at all.
        eprintln!("INFO create {}", request.username);
        self.hang().await;
        let created = self.inner.create(request).await;
        armed.disarm();
        created
    }

    async fn renew(&self, lease: &LeaseRef<'_>, expires_at: DateTime<Utc>) -> Result<(), PluginError> {
        self.inner.renew(lease, expires_at).await
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        self.hang().await;
        self.inner.revoke(lease).await
    }

    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        self.inner.list_users(prefix).await
    }

    async fn set_password(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.inner.set_password(username, password).await
    }

    async fn test_login(&self, username: &str, password: &SecretString) -> Result<(), PluginError> {
        self.inner.test_login(username, password).await
    }
}

fn factory(context: ConnectionContext<'_>) -> Result<Arc<dyn Plugin>, ConfigError> {
    let dir = std::env::var_os("LESSOR_FIXTURE_DIR").map(PathBuf::from).ok_or_else(|| {
        ConfigError::new(format!("connections.{}", context.name), "LESSOR_FIXTURE_DIR is not set")
    })?;
    Ok(Arc::new(Faulty { inner: lessor_postgres::factory(context)?, dir }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    lessor_plugin::serve("fixture", env!("CARGO_PKG_VERSION"), factory).await
}
