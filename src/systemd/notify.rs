//! `Type=notify`: what the service manager is told, over `$NOTIFY_SOCKET`
//! (sd_notify(3)). Without `$NOTIFY_SOCKET` (not run by systemd) every
//! message is dropped.
//!
//! - `STATUS=` while start-up recovery runs, then `READY=1` once it is done
//!   (and the socket is answering): a unit ordered `After=lessor.service`
//!   starts when lessor can issue, and every lease due at start-up is back
//!   in the expiry index;
//! - `STATUS=` with the lease count every few seconds;
//! - `WATCHDOG=1` at half of `WatchdogSec=`, from a task of the same
//!   runtime that serves the socket, so a daemon whose runtime is stuck
//!   stops petting and is restarted;
//! - `STOPPING=1` when shutdown begins.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::broker::Broker;

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends one message; a failure to reach the manager is not the daemon's
/// problem (it is logged at debug and dropped).
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// Whether a service manager listens (`$NOTIFY_SOCKET` is set).
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Starts telling the service manager about the daemon: recovery, then
/// `READY=1`, then the lease count, and the watchdog when one is set.
/// Returns at once.
pub fn start(broker: std::sync::Arc<Broker>, shutdown: CancellationToken) {
    if !managed() {
        return;
    }
    send(&[NotifyState::Status("recovering leases")]);
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let every = Duration::from_micros(usec) / 2;
        info!(every_ms = every.as_millis() as u64, "pinging the systemd watchdog");
        broker.tasks().spawn(watchdog(every, shutdown.clone()));
    }
    let tasks = broker.tasks().clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = broker.wait_ready() => {}
            _ = shutdown.cancelled() => return,
        }
        send(&[NotifyState::Ready, NotifyState::Status(&status(&broker))]);
        info!("told the service manager the daemon is ready");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATUS_EVERY) => send(&[NotifyState::Status(&status(&broker))]),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    if managed() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

fn status(broker: &Broker) -> String {
    format!("ready; {} leases scheduled for expiry or retry", broker.scheduled())
}

async fn watchdog(every: Duration, shutdown: CancellationToken) {
    loop {
        send(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
