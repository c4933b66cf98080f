//! Listing leases for a caller: the store read page by page, each lease
//! filtered by who may see it, with the cursor of the next page.

use super::{Broker, BrokerError, Caller};
use crate::lease::{Lease, LeaseState};
use crate::store::Page;

impl Broker {
    /// Leases under `prefix` that the caller may see, revoked ones left
    /// out, in id order: up to `limit` after the cursor `after`, and the
    /// cursor of the next page (`None` when this one is the last).
    pub async fn list(
        &self,
        prefix: &str,
        caller: &Caller,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Lease>, Option<String>), BrokerError> {
        assert!(limit >= 1, "a page holds at least one lease");
        // One lease past the page tells whether another page follows; the
        // store is read in batches of at least 1000, so a caller who owns
        // few of many leases costs few queries whatever its limit.
        let want = limit.saturating_add(1);
        let batch_size = want.clamp(1000, 10_000);
        let mut leases = Vec::new();
        let mut cursor = after.map(str::to_string);
        loop {
            let page = Page { after: cursor.as_deref(), limit: batch_size };
            let batch = self.store.list(prefix, &[LeaseState::Revoked], page).await?;
            let last_batch = batch.len() < batch_size;
            cursor = batch.last().map(|l| l.id.as_str().to_string()).or(cursor);
            leases.extend(batch.into_iter().filter(|l| caller.may_touch(l)));
            if leases.len() >= want {
                leases.truncate(limit);
                let next = leases.last().map(|l| l.id.as_str().to_string());
                return Ok((leases, next));
            }
            if last_batch {
                return Ok((leases, None));
            }
        }
    }

    /// Every lease under `prefix` the caller may see (revoked ones left
    /// out), for the daemon's own sweeps.
    pub async fn list_all(&self, prefix: &str, caller: &Caller) -> Result<Vec<Lease>, BrokerError> {
        Ok(self.list(prefix, caller, None, usize::MAX).await?.0)
    }
}
