//! [`AwsPlugin`] as a value: one connection's settings, the SDK clients
//! built from them on first use (loading the credential chain is async,
//! building a plugin is not), and lessor's own key after `rotate-root`,
//! which replaces the clients. The engine's halves (`sts`, `iam_user`,
//! `access_keys`) and the `Plugin` trait (`client`) build on it.
//!
//! Keys live in `SecretString`s and the SDK's own credential types, whose
//! `Debug` redacts them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::Credentials;
use lessor_plugin::{ConfigError, ConnectionContext};
use secrecy::{ExposeSecret, SecretString};
use tracing::debug;

use crate::config::ConnectionSettings;

/// The AWS plugin for one `[connections.NAME]`.
pub struct AwsPlugin {
    pub(crate) settings: ConnectionSettings,
    /// The SDK clients, built on first use and again after lessor's own
    /// key was rotated.
    clients: RwLock<Option<Arc<Clients>>>,
    /// lessor's own key after `rotate-root`; it wins over the configured one.
    rotated_key: RwLock<Option<(String, SecretString)>>,
    /// Bumped at every switch of key: clients built with an older key while
    /// it happened are thrown away, not cached.
    key_generation: AtomicU64,
}

impl fmt::Debug for AwsPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsPlugin").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The SDK clients, built on first use.
pub(crate) struct Clients {
    pub(crate) sdk: SdkConfig,
    pub(crate) sts: aws_sdk_sts::Client,
    pub(crate) iam: aws_sdk_iam::Client,
}

impl AwsPlugin {
    /// Builds the plugin for one connection. Does not call AWS: the clients
    /// are built on first use, and [`Plugin::verify`] checks the credential.
    ///
    /// [`Plugin::verify`]: lessor_plugin::Plugin::verify
    pub fn new(ctx: ConnectionContext<'_>) -> Result<Self, ConfigError> {
        let settings = ConnectionSettings::parse(ctx.name, ctx.url, ctx.password, ctx.options)?;
        Ok(Self {
            settings,
            clients: RwLock::default(),
            rotated_key: RwLock::default(),
            key_generation: AtomicU64::new(0),
        })
    }

    /// The key lessor signs with: a rotated one, else the configured one
    /// (none: the standard AWS credential chain).
    pub(crate) fn own_key(&self) -> Option<(String, SecretString)> {
        self.rotated_key.read().unwrap().clone().or_else(|| self.settings.static_key.clone())
    }

    pub(crate) async fn clients(&self) -> Arc<Clients> {
        loop {
            if let Some(clients) = self.clients.read().unwrap().clone() {
                return clients;
            }
            let generation = self.key_generation.load(Ordering::SeqCst);
            let built = Arc::new(self.build_clients().await);
            let mut slot = self.clients.write().unwrap();
            // Built with a key that was replaced meanwhile: build again.
            if self.key_generation.load(Ordering::SeqCst) == generation {
                return slot.get_or_insert(built).clone();
            }
        }
    }

    async fn build_clients(&self) -> Clients {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(25))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.settings.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .app_name(AppName::new("lessor").expect("a valid app name"));
        if let Some((id, secret)) = self.own_key() {
            let credentials = Credentials::new(id, secret.expose_secret(), None, None, "lessor-config");
            loader = loader.credentials_provider(credentials);
        }
        let sdk = loader.load().await;
        let mut sts = aws_sdk_sts::config::Builder::from(&sdk);
        sts.set_endpoint_url(self.settings.sts_endpoint.clone());
        let sts = sts.build();
        let mut iam = aws_sdk_iam::config::Builder::from(&sdk);
        iam.set_endpoint_url(self.settings.iam_endpoint.clone());
        let iam = iam.build();
        Clients { sts: aws_sdk_sts::Client::from_conf(sts), iam: aws_sdk_iam::Client::from_conf(iam), sdk }
    }

    pub(crate) async fn iam(&self) -> aws_sdk_iam::Client {
        self.clients().await.iam.clone()
    }

    /// From now on, sign with the rotated key `key_id` / `secret`.
    pub(crate) fn switch_own_key(&self, key_id: &str, secret: &SecretString) {
        let mut slot = self.clients.write().unwrap();
        *self.rotated_key.write().unwrap() = Some((key_id.to_string(), secret.clone()));
        self.key_generation.fetch_add(1, Ordering::SeqCst);
        *slot = None;
        debug!(connection = %self.settings.name, access_key_id = key_id, "requests are now signed with the rotated key");
    }
}
