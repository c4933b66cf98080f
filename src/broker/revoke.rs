//! Revocation on a caller's behalf: one lease, every lease under a prefix
//! (operators), and a role's sessions (operators). How a revocation is
//! attempted and retried is `expiry`'s.

use lessor_plugin::PluginError;
use tracing::{info, warn};

use std::time::Duration;

use super::{Broker, BrokerError, Caller, Revocation, REVOKE_PREFIX_CONCURRENCY};

/// How long a revocation asked for now waits for another node that works
/// on the same lease, and how often it looks.
const BUSY_WAIT: Duration = Duration::from_secs(10);
const BUSY_POLL: Duration = Duration::from_millis(100);
use crate::lease::{LeaseId, LeaseState};
use crate::store::Write;

impl Broker {
    /// Operator action for a leaked credential of `role` that the backend
    /// cannot revoke one by one (AWS: deny every session of the IAM role
    /// issued before now). Admin callers only; returns what was done.
    pub async fn revoke_sessions(
        &self,
        role_name: &str,
        caller: &Caller,
    ) -> Result<serde_json::Value, BrokerError> {
        caller.require_admin("revoke the sessions of a role")?;
        let role = self.role(role_name)?;
        let backend = &self.backends[&role.connection];
        let plugin = &backend.connection.plugin;
        // The plugin bounds its own calls (the AWS SDK's operation timeout).
        let done = match plugin.revoke_sessions(&role.name, &role.settings).await {
            Ok(done) => done,
            Err(PluginError::Unsupported { .. }) => {
                return Err(BrokerError::BadRequest {
                    message: format!(
                        "role {role_name:?} ({} plugin) has no sessions to revoke",
                        plugin.name()
                    ),
                })
            }
            Err(source) => {
                warn!(role = %role.name, uid = caller.uid, error = %source, "revoking the role's sessions failed");
                return Err(BrokerError::Backend {
                    context: format!("revoking the sessions of role {role_name:?}"),
                    source,
                });
            }
        };
        info!(role = %role.name, uid = caller.uid, pid = caller.pid, done = %done, "revoked the role's older sessions");
        Ok(done)
    }

    /// Revokes a lease now, on behalf of a caller. On a backend failure the
    /// lease stays scheduled for retry and the error is returned, unless
    /// `force`, which drops the lease anyway.
    pub async fn revoke(
        &self,
        id: &LeaseId,
        force: bool,
        caller: &Caller,
    ) -> Result<Revocation, BrokerError> {
        if force {
            caller.require_admin("force a revocation")?;
        }
        let lease = self.get(id, caller).await?;
        if lease.state == LeaseState::Revoked {
            return Ok(Revocation::AlreadyRevoked);
        }
        // A holder of a shared lease lets go of it; an admin revokes it
        // for every holder (revoke_now forgets it).
        if !caller.is_admin() {
            if let Some(holders) = self.release_shared(id, caller).await {
                return Ok(Revocation::Released { holders });
            }
        }
        match self.revoke_claimed(id).await {
            Err(BrokerError::Backend { .. }) if force => {
                let _lock = self.locks.lock(id).await;
                // The retry the failure scheduled stays in the index; when
                // it falls due it finds no lease and does nothing.
                if self.store.write(Write::Delete { id: id.clone() }).await? {
                    self.give_back_quota(&lease);
                }
                warn!(lease = %id, "forced: lease dropped although the backend refused the revocation");
                Ok(Revocation::Forced)
            }
            other => other,
        }
    }

    /// Revokes a lease whose holder is gone (a systemd unit whose
    /// processes have all exited): no caller asks, so no permission is
    /// checked; revoking only ever takes a credential away. A failure is
    /// recorded and retried like any revocation's.
    pub async fn revoke_ended(&self, id: &LeaseId) -> Result<Revocation, BrokerError> {
        self.revoke_claimed(id).await
    }

    /// The active leases this node delivered to systemd units.
    pub async fn unit_bound(&self) -> Result<Vec<crate::lease::Lease>, BrokerError> {
        Ok(self.store.unit_bound().await?)
    }

    /// Revokes a lease now; when another node works on it (it is expiring
    /// there, or being renewed), waits for that node to finish, a while.
    async fn revoke_claimed(&self, id: &LeaseId) -> Result<Revocation, BrokerError> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.revoke_now(id, None).await? {
                Revocation::Busy { node } if tokio::time::Instant::now() >= deadline => {
                    return Err(BrokerError::Conflict {
                        id: id.clone(),
                        state: "busy",
                        message: format!(
                            "node {node:?} is working on this lease and did not finish within {}s; try again",
                            BUSY_WAIT.as_secs()
                        ),
                    })
                }
                Revocation::Busy { .. } => tokio::time::sleep(BUSY_POLL).await,
                done => return Ok(done),
            }
        }
    }

    /// Revokes every lease under `prefix` the caller may touch. Returns how
    /// many were revoked and the errors of those that were not.
    pub async fn revoke_prefix(
        &self,
        prefix: &str,
        force: bool,
        caller: &Caller,
    ) -> Result<(usize, Vec<(LeaseId, BrokerError)>), BrokerError> {
        caller.require_admin("revoke leases by prefix")?;
        use futures_util::stream::{self, StreamExt};
        let leases = self.list_all(prefix, caller).await?;
        // Many at a time when a connection revokes in batches, so the
        // batches fill; each still runs under its own lock.
        let batching = self.backends.values().any(|b| b.connection.plugin.revokes_in_batches());
        let concurrency = if batching { REVOKE_PREFIX_CONCURRENCY } else { 4 };
        let outcomes: Vec<(LeaseId, Result<Revocation, BrokerError>)> = stream::iter(leases)
            .map(|lease| async move {
                let outcome = self.revoke(&lease.id, force, caller).await;
                (lease.id, outcome)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut revoked = 0;
        let mut failed = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                Ok(_) => revoked += 1,
                Err(e) => failed.push((id, e)),
            }
        }
        failed.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok((revoked, failed))
    }
}
