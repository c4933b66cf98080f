//! The daemon's event bus: what `GET /v1/watch` streams to its callers.
//!
//! A `tokio::sync::broadcast` channel: publishing costs nothing when nobody
//! watches, and a watcher that falls behind is told so and sent a fresh
//! snapshot instead of the events it missed. Events carry the item's full
//! current state (never a secret), as SPIFFE's workload API does, so a
//! client that reconnects needs nothing it missed.

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::lease::Lease;

/// How many events a slow watcher may fall behind before it is resent a
/// snapshot.
const CAPACITY: usize = 1024;

/// Something a watcher may care about.
#[derive(Debug, Clone)]
pub enum Event {
    /// A static account has a new current credential (fetch it with
    /// `static get`; the event never carries it).
    Rotated {
        account: String,
        version: u64,
        username: String,
        rotated_at: Option<DateTime<Utc>>,
        previous_username: Option<String>,
        previous_valid_until: Option<DateTime<Utc>>,
        next_rotation_at: Option<DateTime<Utc>>,
    },
    /// A lease has reached two thirds of its TTL: time to renew or replace it.
    LeaseExpiring(Box<Lease>),
    /// A lease was revoked (by expiry, its owner or an operator).
    LeaseRevoked(Box<Lease>),
}

/// The sending side, shared by whatever publishes events.
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }
}

impl Events {
    /// Publishes `event` to every current watcher (none is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    /// A new watcher's receiving end.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
