//! lessor, a dynamic credential broker: a local daemon that mints
//! short-lived database and cloud credentials on request over a Unix
//! socket, tracks each as a lease, and removes it when the lease ends.
//!
//! - [`config`]: the TOML config, its schema and its check into a
//!   [`config::ValidatedConfig`], plain data;
//! - [`setup`]: the runtime form each component builds from its section
//!   (plugins, roles checked by their plugin), gathered in a
//!   [`setup::Setup`] by [`daemon::build`];
//! - [`lease`]: the lease model and ids;
//! - [`store`]: durable lease storage (embedded SQLite, group commit);
//! - [`expiry`]: the time-ordered index of due leases and retry backoff;
//! - [`broker`]: issuance, renewal, revocation and the background work;
//! - [`api`]: the HTTP/JSON socket API: the native routes, the router
//!   (which also serves [`vault`]'s) and its guard layer, the accept loop
//!   and peer identity;
//! - [`http`]: what both route sets share, below them: the handlers'
//!   state, the error answer, extractors and body readers, the audit of
//!   requests, and the one conversion of domain types into the client
//!   crate's wire types;
//! - [`audit`]: the hash-chained audit log, its group-synced writer and
//!   `lessor audit verify`;
//! - [`events`]: the bus of rotation and lease events `GET /v1/watch` streams;
//! - [`daemon`]: `lessor serve`, socket ownership, start-up and shutdown;
//! - [`client`]: the socket client the CLI, tests and benchmarks use;
//! - [`cli`]: the command line;
//! - [`metrics`]: every metric's name and labels, and the Prometheus
//!   exporter behind `GET /v1/metrics`;
//! - [`tidy`]: the sweep that drops backend users no lease covers;
//! - [`rotation`]: static accounts, rotated in phases on a schedule or on
//!   demand;
//! - [`seal`]: secrets at rest, sealed with the key of `server.seal_key_file`;
//! - [`vault`]: the Vault-compatible routes, a thin translation of Vault's
//!   paths and shapes onto the broker.
//!
//! - [`systemd`]: readiness and socket activation under systemd, and the
//!   credentials socket `LoadCredential=` reads, tying a lease to the
//!   unit's life;
//! - [`external`]: plugins outside the binary, each its own process
//!   speaking the plugin protocol, supervised and restarted.
//!
//! Backends live in their own crates behind the `lessor_plugin::Plugin`
//! trait; [`setup::PLUGINS`] is the one table that registers the built-in
//! ones, `[plugins.NAME]` the external ones.

pub mod api;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod events;
pub mod expiry;
pub mod external;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod rotation;
pub mod seal;
pub mod setup;
pub mod store;
pub mod systemd;
pub mod tidy;
pub mod vault;
