//! lessor's socket API for applications.
//!
//! - [`Client`]: HTTP/1.1 + JSON over the daemon's Unix socket, one fresh
//!   connection per request (the daemon reads the caller's identity from
//!   each); its methods answer the raw [`Response`], whatever the status;
//! - [`types`]: the API's answers, defined once and shared with the daemon;
//! - the typed calls ([`Client::issue`], [`Client::renew_lease`], …) answer
//!   those types, or an [`Error`] that says whether the daemon refused
//!   (and with which code) or could not be reached;
//! - [`keeper`]: holds one credential current — renews, replaces before
//!   the lease runs out, follows rotations — and publishes it on a
//!   `tokio::sync::watch` channel, for pools and `lessor exec`;
//! - `pool` (features `deadpool-postgres`, `mysql`): deadpool pools whose
//!   new connections use the keeper's credential and whose recycle step
//!   retires connections opened with one that is about to stop working.
//!
//! - [`env`]: which environment variables a credential goes in.
//!
//! The socket is `LESSOR_SOCKET` or [`DEFAULT_SOCKET`] ([`Client::from_env`]).

pub mod env;
pub mod keeper;
mod lease;
#[cfg(any(feature = "deadpool-postgres", feature = "mysql"))]
pub mod pool;
mod socket;
mod typed;
pub mod types;

pub use socket::{lease_path, ApiError, Client, ClientError, Response};
pub use typed::Error;
pub use types::{Credential, Issued, Lease, LeaseId, LeaseState, Renewed, Rotation, StaticInfo, WatchEvent};

/// Where `lessor serve` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/lessor/lessor.sock";
