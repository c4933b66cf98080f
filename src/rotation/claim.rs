//! A rotation's claim on its account, kept alive while the rotation runs.
//!
//! The claim is short (the node timeout, 30 s by default) and measured by
//! the store's clock, so a node that stalls (a pause, a lost network) loses
//! it soon and another node can rotate in its place. While the rotation
//! runs, a renewal task extends it every third of its length. Each
//! grant carries a token that every write of the account's state is
//! conditional on ([`LeaseStore::static_write`]): a node whose claim was
//! taken over can neither write nor, seeing the refusal, touch the backend
//! again. The rotation checks [`Held::check`] before each backend step, so
//! it also stops when the renewal found the claim gone first.
//!
//! A backend call already under way when the claim is lost is not cut
//! off: the statement may already be with the backend, and abandoning the
//! call would not take it back. The rotation stops after it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::RotationError;
use crate::store::{LeaseStore, StaticClaim, StoreError};

/// A claim this run holds, renewed until it is dropped.
#[derive(Debug)]
pub(super) struct Held {
    claim: StaticClaim,
    /// Cancelled once the renewal found the claim gone, or could not
    /// renew it for as long as it lasts.
    lost: CancellationToken,
    /// Stops the renewal when the run ends.
    _renewal: DropGuard,
}

impl Held {
    /// Claims `name` for `holder` for `ttl` and starts renewing it; `None`
    /// when someone else holds it.
    pub(super) async fn take(
        store: &Arc<dyn LeaseStore>,
        tasks: &TaskTracker,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let Some(claim) = store.static_claim(name, holder, ttl).await? else { return Ok(None) };
        let lost = CancellationToken::new();
        let done = CancellationToken::new();
        tasks.spawn(renew(store.clone(), claim.clone(), ttl, lost.clone(), done.clone()));
        Ok(Some(Self { claim, lost, _renewal: done.drop_guard() }))
    }

    /// The claim, for the writes made under it.
    pub(super) fn claim(&self) -> &StaticClaim {
        &self.claim
    }

    /// `Err(ClaimLost)` once the claim is known to be gone: the run must
    /// not take another step.
    pub(super) fn check(&self) -> Result<(), RotationError> {
        match self.lost.is_cancelled() {
            true => Err(self.lost_error()),
            false => Ok(()),
        }
    }

    pub(super) fn lost_error(&self) -> RotationError {
        RotationError::ClaimLost { name: self.claim.name.clone(), holder: self.claim.holder.clone() }
    }
}

/// Extends `claim` every third of `ttl` until `done`. A renewal that finds
/// the claim gone, or failures for longer than `ttl` (the claim may have
/// lapsed and been taken meanwhile), cancel `lost`.
async fn renew(
    store: Arc<dyn LeaseStore>,
    claim: StaticClaim,
    ttl: Duration,
    lost: CancellationToken,
    done: CancellationToken,
) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = done.cancelled() => return,
        }
        let renewal = tokio::time::timeout(every, store.static_renew(&claim, ttl));
        let outcome = renewal.await.unwrap_or_else(|_| Err(StoreError::Io("no answer in time".into())));
        match outcome {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                warn!(account = %claim.name, holder = %claim.holder, "lost the rotation claim: it lapsed and was taken over (another node, or another run); this rotation stops before its next step");
                lost.cancel();
                return;
            }
            Err(e) if renewed.elapsed() >= ttl => {
                warn!(account = %claim.name, holder = %claim.holder, error = %e, "lost the rotation claim: it could not be renewed for as long as it lasts; this rotation stops before its next step");
                lost.cancel();
                return;
            }
            Err(e) => warn!(account = %claim.name, error = %e, "cannot renew the rotation claim; retrying"),
        }
    }
}
