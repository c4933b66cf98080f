//! The credential keeper: holds one dynamic lease (or one static account)
//! and publishes the credential to use now on a `tokio::sync::watch`
//! channel, so a pool or a process always has one that works.
//!
//! For a role it renews the lease at two thirds of its TTL; when the lease
//! gets near its `max_ttl`, where renewing no longer helps, it obtains a new
//! credential, publishes it, and revokes the old lease after `drain` (time
//! for connections opened with the old one to be returned and retired). A
//! lease revoked under it (an operator, an expiry while the daemon was
//! down) is replaced at once. For a static account it reads the credential
//! and follows `rotated` events of `GET /v1/watch`; the previous credential
//! keeps working for the account's overlap, which is the drain.
//!
//! When the daemon restarts, calls fail with [`Error::Unreachable`]; the
//! keeper retries with backoff (the held credential keeps working in the
//! backend meanwhile) and resumes. On [`Keeper::shutdown`] it revokes the
//! lease it holds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::typed::Error;
use crate::types::{Credential, Issued, WatchEvent};
use crate::Client;

/// What the keeper holds.
#[derive(Debug, Clone)]
pub enum Source {
    /// A dynamic credential of this role, with this TTL (or the role's).
    Role { role: String, ttl: Option<String> },
    /// A static account.
    Static { name: String },
}

/// How the keeper behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a replaced lease is kept before it is revoked, so that
    /// connections opened with it can be retired first. Capped at a third
    /// of the lease's TTL.
    pub drain: Duration,
    /// The longest wait between two attempts to reach the daemon.
    pub max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { drain: Duration::from_secs(10), max_backoff: Duration::from_secs(5) }
    }
}

/// The credential to use now.
#[derive(Debug, Clone)]
pub struct Held {
    pub credential: Credential,
    /// The lease behind a dynamic credential.
    pub lease_id: Option<String>,
    /// The plugin that made a dynamic credential (`postgres`, `mysql`,
    /// `aws`); `None` for a static account.
    pub plugin: Option<String>,
    /// Counts the credentials this keeper has published, from 1.
    pub generation: u64,
    /// When a dynamic credential's lease ends unless renewed (a static
    /// one: `None`, it works until rotated away).
    pub expires_at: Option<DateTime<Utc>>,
}

/// A running keeper. Dropping it stops it without revoking anything;
/// [`Keeper::shutdown`] revokes the lease it holds.
#[derive(Debug)]
pub struct Keeper {
    current: watch::Receiver<Arc<Held>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Keeper {
    /// Obtains the first credential (retrying while the daemon cannot be
    /// reached or answers 429/502/503) and starts keeping it. Fails at once
    /// on a refusal that will not change (unknown role, forbidden).
    pub async fn start(client: Client, source: Source, options: Options) -> Result<Self, Error> {
        let stop = CancellationToken::new();
        let mut state = State {
            client,
            source,
            options,
            held: None,
            last: None,
            generation: 0,
            draining: Arc::default(),
        };
        let first = state.obtain(&stop).await?;
        let (tx, current) = watch::channel(Arc::new(first));
        let task = tokio::spawn(state.run(tx, stop.clone()));
        Ok(Self { current, stop, task })
    }

    /// A receiver that sees every credential published from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Held>> {
        self.current.clone()
    }

    /// The credential to use now.
    pub fn current(&self) -> Arc<Held> {
        self.current.borrow().clone()
    }

    /// Stops keeping, and revokes the lease held (a static account is left
    /// as it is).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keeper's task state.
struct State {
    client: Client,
    source: Source,
    options: Options,
    /// The lease of the credential published last.
    held: Option<Issued>,
    /// The credential published last, to tell a static account's
    /// unchanged credential (after a reconnect) from a rotated one.
    last: Option<Credential>,
    generation: u64,
    /// Replaced leases whose drain is not over yet.
    draining: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Why the wait for the next step ended.
enum Wake {
    Stop,
    Due,
    Event(Box<WatchEvent>),
    WatchEnded,
}

impl State {
    fn publish(&mut self, credential: Credential, issued: Option<Issued>) -> Held {
        if !self.last.as_ref().is_some_and(|last| last.same_as(&credential)) {
            self.generation += 1;
        }
        self.last = Some(credential.clone());
        let held = Held {
            credential,
            lease_id: issued.as_ref().map(|i| i.lease_id.clone()),
            plugin: issued.as_ref().map(|i| i.plugin.clone()),
            generation: self.generation,
            expires_at: issued.as_ref().map(|i| i.expires_at),
        };
        self.held = issued;
        held
    }

    /// A fresh credential from the source, retrying what may pass.
    async fn obtain(&mut self, stop: &CancellationToken) -> Result<Held, Error> {
        let mut backoff = Backoff::new(self.options.max_backoff);
        loop {
            let attempt = match self.source.clone() {
                Source::Role { role, ttl } => self.client.issue(&role, ttl.as_deref()).await.map(|issued| {
                    let credential = issued.credential.clone();
                    self.publish(credential, Some(issued))
                }),
                Source::Static { name } => self.client.static_account(&name).await.and_then(|info| {
                    let credential = info.credential.to_credential().ok_or_else(|| Error::Unexpected {
                        status: 200,
                        message: format!("static account {name:?} answered without its secret"),
                    })?;
                    Ok(self.publish(credential, None))
                }),
            };
            match attempt {
                Ok(held) => return Ok(held),
                Err(e) if e.is_retryable() && !stop.is_cancelled() => {
                    debug!(error = %e, "keeper: cannot obtain a credential yet; retrying");
                    if backoff.wait(stop).await.is_err() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run(mut self, tx: watch::Sender<Arc<Held>>, stop: CancellationToken) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch_events(
            self.client.clone(),
            events_tx,
            stop.clone(),
            self.options.max_backoff,
        ));
        loop {
            let due = self.next_step();
            let wake = tokio::select! {
                _ = stop.cancelled() => Wake::Stop,
                _ = tokio::time::sleep_until(due) => Wake::Due,
                event = events.recv() => event.map_or(Wake::WatchEnded, |e| Wake::Event(Box::new(e))),
            };
            let replace = match wake {
                Wake::Stop => break,
                Wake::WatchEnded => {
                    // Only at shutdown; wait for the stop that ended it.
                    stop.cancelled().await;
                    break;
                }
                Wake::Event(event) => self.concerns_us(&event),
                Wake::Due => match self.renew_or_replace().await {
                    Ok(replace) => replace,
                    Err(e) => {
                        debug!(error = %e, "keeper: renewal failed; retrying");
                        let mut backoff = Backoff::new(self.options.max_backoff);
                        let _ = backoff.wait(&stop).await;
                        self.expired()
                    }
                },
            };
            if replace {
                let old = self.held.take();
                let generation = self.generation;
                match self.obtain(&stop).await {
                    Ok(held) if held.generation == generation => {
                        debug!("keeper: the credential has not changed");
                    }
                    Ok(held) => {
                        info!(generation = held.generation, "keeper: new credential published");
                        let _ = tx.send(Arc::new(held));
                    }
                    Err(e) => {
                        warn!(error = %e, "keeper: cannot obtain a new credential");
                        self.held = old;
                        // A refusal that will not change soon: do not spin on it.
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(self.options.max_backoff) => {}
                        }
                        continue;
                    }
                }
                if let Some(old) = old {
                    self.retire_later(old);
                }
            }
        }
        watcher.abort();
        // The lease held, and those replaced whose drain is not over: nobody
        // uses them once the keeper stops.
        let draining: Vec<String> = self.draining.lock().unwrap().drain().collect();
        for lease in self.held.take().map(|h| h.lease_id).into_iter().chain(draining) {
            if let Err(e) = self.client.revoke_lease(&lease).await {
                warn!(%lease, error = %e, "keeper: could not revoke a lease at shutdown; it ends at its expiry");
            }
        }
    }

    /// When to look at the lease next: two thirds into what is left of it.
    fn next_step(&self) -> tokio::time::Instant {
        let Some(held) = &self.held else {
            return tokio::time::Instant::now() + Duration::from_secs(3600);
        };
        let left = (held.expires_at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::Instant::now() + left * 2 / 3
    }

    /// How long before the lease's end its replacement is fetched: enough
    /// for the drain and a third of a TTL to spare.
    fn lead(&self, held: &Issued) -> Duration {
        let ttl = Duration::from_secs(held.ttl_seconds.max(1) as u64);
        self.drain(held) + ttl / 3
    }

    fn drain(&self, held: &Issued) -> Duration {
        let ttl = Duration::from_secs(held.ttl_seconds.max(1) as u64);
        self.options.drain.min(ttl / 3)
    }

    /// Whether the held lease has (nearly) ended.
    fn expired(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.expires_at <= Utc::now() + chrono::Duration::seconds(1))
    }

    /// Renews the lease, or says it is time to replace it: when what is
    /// left before its max_ttl is within the lead, or it is not renewable.
    async fn renew_or_replace(&mut self) -> Result<bool, Error> {
        let Some(held) = &self.held else { return Ok(false) };
        let lead = chrono::Duration::from_std(self.lead(held)).unwrap_or_default();
        let info = self.client.lease(&held.lease_id).await?;
        if info.state != crate::LeaseState::Active {
            return Ok(true);
        }
        if !held.renewable || info.max_expires_at - Utc::now() <= lead {
            return Ok(true);
        }
        let increment = format!("{}s", held.ttl_seconds.max(1));
        let renewed = self.client.renew_lease(&held.lease_id, Some(&increment)).await?;
        let renewed = renewed.lease;
        debug!(lease = %held.lease_id, expires_at = %renewed.expires_at, "keeper: renewed");
        if let Some(held) = &mut self.held {
            held.expires_at = renewed.expires_at;
        }
        Ok(renewed.max_expires_at - Utc::now() <= lead)
    }

    /// Whether a watch event means the held credential must be replaced.
    fn concerns_us(&self, event: &WatchEvent) -> bool {
        match (&self.source, event) {
            (Source::Static { name }, WatchEvent::Rotated(rotation)) => rotation.account == *name,
            // A snapshot comes after (re)connecting: a rotation may have
            // been missed meanwhile.
            (Source::Static { .. }, WatchEvent::Snapshot { .. }) => true,
            (Source::Role { .. }, WatchEvent::LeaseRevoked { lease }) => {
                self.held.as_ref().is_some_and(|h| h.lease_id == lease.id.as_str())
            }
            _ => false,
        }
    }

    /// Revokes a replaced lease once its drain is over (or at shutdown,
    /// whichever comes first).
    fn retire_later(&self, old: Issued) {
        let client = self.client.clone();
        let drain = self.drain(&old);
        let draining = self.draining.clone();
        draining.lock().unwrap().insert(old.lease_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            if !draining.lock().unwrap().remove(&old.lease_id) {
                return; // revoked at shutdown
            }
            match client.revoke_lease(&old.lease_id).await {
                Ok(()) => debug!(lease = %old.lease_id, "keeper: replaced lease revoked"),
                Err(e) => {
                    debug!(lease = %old.lease_id, error = %e, "keeper: replaced lease not revoked; it ends at its expiry")
                }
            }
        });
    }
}

/// Follows `GET /v1/watch`, reconnecting with backoff, until `stop`.
async fn watch_events(
    client: Client,
    events: mpsc::UnboundedSender<WatchEvent>,
    stop: CancellationToken,
    max_backoff: Duration,
) {
    let mut backoff = Backoff::new(max_backoff);
    while !stop.is_cancelled() {
        let stream = client.watch(|line| match serde_json::from_value::<WatchEvent>(line) {
            Ok(event) => events.send(event).is_ok(),
            Err(_) => true,
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            ended = stream => {
                debug!(result = ?ended.map(|r| r.status), "keeper: the watch stream ended; reconnecting");
            }
        }
        if backoff.wait(&stop).await.is_err() {
            return;
        }
    }
}

/// Exponential backoff with jitter, from 100 ms to a cap.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { next: Duration::from_millis(100), max }
    }

    /// Waits the next delay; `Err` if `stop` came first.
    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), ()> {
        use rand::Rng;
        let jitter = rand::rng().random_range(0.8..1.2);
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = stop.cancelled() => Err(()),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}
