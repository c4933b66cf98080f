//! The daemon's event bus: what `GET /v1/watch` streams to its callers.
//!
//! A `tokio::sync::broadcast` channel: publishing costs nothing when nobody
//! watches, and a watcher that falls behind is told so and sent a fresh
//! snapshot instead of the events it missed. Events carry the item's full
//! current state (never a secret), as SPIFFE's workload API does, so a
//! client that reconnects needs nothing it missed.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use lessor_client::Rotation;

use crate::lease::Lease;

/// How many events a slow watcher may fall behind before it is resent a
/// snapshot.
const CAPACITY: usize = 1024;

/// Something a watcher may care about. (Serialised only to travel
/// between nodes; watchers see the API's own shape.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    /// A static account has a new current credential (fetch it with
    /// `static get`; the event never carries it).
    Rotated(Rotation),
    /// A lease has reached two thirds of its TTL: time to renew or replace it.
    LeaseExpiring(Box<Lease>),
    /// A lease was revoked (by expiry, its owner or an operator).
    LeaseRevoked(Box<Lease>),
}

/// The sending side, shared by whatever publishes events.
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
    /// Where events the other nodes' watchers need go, when nodes share
    /// a store (see [`crate::store::cluster`]).
    cluster: Arc<Mutex<Option<mpsc::UnboundedSender<Event>>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0, cluster: Arc::default() }
    }
}

impl Events {
    /// Publishes `event` to every current watcher (none is fine), and a
    /// static account's `rotated` to the other nodes' watchers too.
    pub fn emit(&self, event: Event) {
        if matches!(event, Event::Rotated(_)) {
            if let Some(cluster) = self.cluster.lock().unwrap().as_ref() {
                let _ = cluster.send(event.clone());
            }
        }
        self.emit_local(event);
    }

    /// Publishes `event` to this node's watchers only (an event another
    /// node published).
    pub fn emit_local(&self, event: Event) {
        let _ = self.sender.send(event);
    }

    /// From now on, events for the other nodes also go to the returned
    /// channel, for the task that publishes them through the store.
    pub fn forward_to_cluster(&self) -> mpsc::UnboundedReceiver<Event> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.cluster.lock().unwrap() = Some(sender);
        receiver
    }

    /// A new watcher's receiving end.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
