//! lessor as a systemd service, and systemd as a way to deliver
//! credentials:
//!
//! - [`notify`]: `Type=notify` readiness after start-up recovery, status,
//!   watchdog and stopping messages;
//! - [`activation`]: the sockets `lessor.socket` and
//!   `lessor-credentials.socket` pass in (socket activation), served
//!   instead of binding our own, so a restart loses no queued request;
//! - [`credentials`]: the credentials socket systemd's `LoadCredential=`
//!   connects to, delivering `[credentials]` to the unit the service
//!   manager names, checked against the policies as that unit;
//! - [`units`]: a delivered credential's lease, renewed while its unit's
//!   cgroup holds a process and revoked when it holds none.
//!
//! Nothing here needs systemd as PID 1 to build or run: without
//! `$NOTIFY_SOCKET` and `LISTEN_FDS` the daemon binds its own sockets and
//! tells nobody.

pub mod activation;
pub mod credentials;
pub mod notify;
pub mod units;

pub use activation::Inherited;
pub use credentials::Credentials;
