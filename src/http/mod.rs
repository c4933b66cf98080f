//! What every HTTP route of the socket stands on, native (`api`) or
//! Vault-compatible (`vault`): the state the handlers are served
//! ([`AppState`]), the error answer ([`ApiError`]) and how broker and
//! rotation errors become one, the extractors and body readers that answer
//! every rejection as such an error, the audit of each request and of
//! irreversible actions (`audited`), and the daemon's domain types as the
//! API's wire types ([`wire`]).
//!
//! Both route sets import this module and it imports neither, so the flow
//! is one way: `api` (the native routes, the router and its layers) →
//! `vault` → `http` → broker, rotation, audit and the rest.

pub(crate) mod audited;
mod error;
mod extract;
mod per_key;
pub mod wire;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::broker::{Broker, BrokerError};
use crate::events::Events;
use crate::policy::Policies;
use crate::rotation::Rotator;
use crate::setup::Setup;
use crate::store::LeaseStore;
use crate::tidy::Tidy;

pub use error::ApiError;
pub use extract::serde_urlencoded_pairs;
pub(crate) use extract::{caller, read_bytes, read_json, Path};
pub use per_key::{KeySlot, PerKey};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub tidy: Arc<Tidy>,
    pub rotator: Arc<Rotator>,
    pub events: Events,
    /// Ends the streams of `GET /v1/watch` when the daemon stops.
    pub shutdown: CancellationToken,
    pub max_body_bytes: usize,
    pub request_timeout: StdDuration,
    /// Who may do what.
    pub policies: Policies,
    /// Where every request is recorded before it is answered.
    pub audit: Audit,
    /// What `GET /v1/metrics` renders; `None` answers an empty text.
    pub metrics: Option<crate::metrics::Exporter>,
    /// Whether the Vault-compatible routes are served (`server.vault_api`).
    pub vault_api: bool,
    /// Open `GET /v1/watch` streams per uid, each at most
    /// `server.max_watches_per_uid`: a stream holds a task and a
    /// subscription for as long as it is open.
    pub watchers: Arc<PerKey<u32>>,
    /// The plugins in use, for `GET /v1/plugins`.
    pub plugins: crate::external::Catalog,
}

impl AppState {
    /// Builds the broker, tidy and rotator for `config` over `store`. None
    /// of their background work runs until the caller starts it.
    pub fn new(setup: &Setup, store: Arc<dyn LeaseStore>, shutdown: CancellationToken) -> Self {
        Self::with_audit(setup, store, shutdown, Audit::disabled())
    }

    /// [`new`](Self::new), recording requests and background actions in `audit`.
    pub fn with_audit(
        setup: &Setup,
        store: Arc<dyn LeaseStore>,
        shutdown: CancellationToken,
        audit: Audit,
    ) -> Self {
        let config = &setup.config;
        let events = Events::default();
        let broker = Broker::new(setup, store.clone(), shutdown.clone(), events.clone(), audit.clone());
        let rotator = Rotator::new(
            setup,
            store.clone(),
            shutdown.clone(),
            broker.tasks().clone(),
            events.clone(),
            audit.clone(),
        );
        Self {
            tidy: Tidy::new(setup, store, &rotator),
            broker,
            rotator,
            events,
            shutdown,
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout.as_std(),
            policies: setup.policies.clone(),
            audit,
            metrics: None,
            vault_api: config.server.vault_api,
            watchers: PerKey::new(config.server.max_watches_per_uid),
            plugins: crate::external::Catalog::new(
                setup.connections.iter().map(|(name, c)| (name, &c.plugin)),
                &setup.hosts,
            ),
        }
    }
}

/// Runs a broker operation in a task of its own, so a caller that goes
/// away (or a request timeout) does not cut it off half-way.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, BrokerError>> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::spawn(work).await.map_err(|e| BrokerError::Internal { message: e.to_string() })?
}
