//! Renewal: a lease's expiry moved, under its claim, so no other node
//! revokes or renews it meanwhile. Who may renew is decided before the
//! claim is taken.

use tracing::debug;

use super::{bounded, now_ms, Broker, BrokerError, Caller};
use crate::config::Duration;
use crate::expiry;
use crate::lease::{Lease, LeaseId, LeaseState};
use crate::metrics;
use crate::store::{Claim, Write};

impl Broker {
    /// Extends a lease by `increment` (the role's default TTL when absent),
    /// capped at the lease's max_ttl.
    pub async fn renew(
        &self,
        id: &LeaseId,
        increment: Option<Duration>,
        caller: &Caller,
    ) -> Result<Lease, BrokerError> {
        // Whose it is, first: a caller that may not touch the lease must not
        // take its lock or claim (on a shared store, a stranger renewing in a
        // loop would keep the owner's renewals busy), and learns nothing of
        // it. The owner of a lease never changes, so this read is enough.
        super::visible(id, self.store.get(id).await?, caller)?;
        self.renew_held(id, increment).await
    }

    /// [`renew`](Self::renew) for lessor itself (a shared lease its
    /// holders still hold): no caller, so no owner check.
    pub(super) async fn renew_held(
        &self,
        id: &LeaseId,
        increment: Option<Duration>,
    ) -> Result<Lease, BrokerError> {
        let _lock = self.locks.lock(id).await;
        // Claimed, so no other node revokes or renews it meanwhile; the
        // renewal's write ends the claim, and so does any way out before it.
        let lease = match self.store.claim(id).await? {
            Claim::Granted(lease) => lease,
            Claim::Missing => return Err(BrokerError::UnknownLease { id: id.to_string() }),
            Claim::Held { by, .. } => {
                return Err(BrokerError::Conflict {
                    id: id.clone(),
                    state: "busy",
                    message: format!("node {by:?} is revoking or renewing this lease now; try again"),
                })
            }
        };
        let renewed = self.renew_claimed(lease, increment).await;
        if renewed.is_err() {
            if let Err(e) = self.store.release(id).await {
                debug!(lease = %id, error = %e, "cannot release the claim; it lapses by itself");
            }
        }
        renewed
    }

    async fn renew_claimed(&self, lease: Lease, increment: Option<Duration>) -> Result<Lease, BrokerError> {
        let id = &lease.id;
        if lease.state != LeaseState::Active {
            return Err(BrokerError::Conflict {
                id: id.clone(),
                state: lease.state.as_str(),
                message: "only active leases can be renewed".into(),
            });
        }
        if !lease.renewable {
            return Err(BrokerError::BadRequest { message: format!("lease {id} is not renewable") });
        }
        let role = self.roles.get(&lease.role).filter(|r| r.connection == lease.connection);
        let increment = match increment.or(role.map(|r| r.default_ttl)) {
            Some(i) if !i.as_std().is_zero() => i,
            Some(_) => {
                return Err(BrokerError::BadRequest { message: "increment must be longer than 0s".into() })
            }
            None => {
                return Err(BrokerError::BadRequest {
                    message: format!("role {:?} is no longer configured; give an increment", lease.role),
                })
            }
        };
        let now = now_ms();
        if lease.expires_at <= now {
            return Err(BrokerError::Conflict {
                id: id.clone(),
                state: "expired",
                message: "the lease has expired and is being revoked".into(),
            });
        }
        let expires_at = now
            .checked_add_signed(increment.to_chrono())
            .map_or(lease.max_expires_at, |at| at.min(lease.max_expires_at));
        let backend = self.backend(&lease)?;
        let lease_ref = self.lease_ref(&lease);
        let _permit = backend.issuance.acquire().await.expect("semaphore never closed");
        bounded(backend.operation_timeout, backend.connection.plugin.renew(&lease_ref, expires_at))
            .await
            .map_err(|source| BrokerError::Backend { context: format!("renewing lease {id}"), source })?;
        // The new term's start, in whole milliseconds as the store keeps
        // it: the warning scheduled below is the one the store's window
        // reads would schedule.
        let renewed_at = super::whole_ms(now);
        if !self.store.write(Write::Renew { id: id.clone(), expires_at, renewed_at }).await? {
            return Err(BrokerError::Conflict {
                id: id.clone(),
                state: "revoking",
                message: "the lease was revoked while renewing".into(),
            });
        }
        // The old expiry's entry goes; its warning, if still to come, is
        // recognised as stale by the expiry it carries.
        self.index.unschedule(id, lease.expires_at, lease.attempts);
        self.schedule_expiry(id, expires_at, lease.attempts);
        self.schedule_warning(id, expiry::warning_at(renewed_at, expires_at), expires_at);
        metrics::renewed(&lease.role);
        debug!(lease = %id, %expires_at, "renewed");
        Ok(Lease { expires_at, ..lease })
    }
}
