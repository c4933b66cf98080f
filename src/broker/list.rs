//! Listing leases for a caller: the store read page by page, each lease
//! filtered by who may see it, with the cursor of the next page.

use super::{Broker, BrokerError, Caller};
use crate::lease::{Lease, LeaseState};
use crate::store::Page;

/// The most leases one page of a listing reads from the store to find the
/// caller's own: a caller who owns few of many leases gets short pages
/// (and a cursor) rather than a scan of the whole store per request.
pub const MAX_SCANNED: usize = 10_000;

impl Broker {
    /// Leases under `prefix` that the caller may see, revoked ones left
    /// out, in id order: up to `limit` after the cursor `after`, and the
    /// cursor of the next page (`None` when this one is the last). At most
    /// [`MAX_SCANNED`] (or `limit + 1`) leases are read from the store, so a
    /// page may hold fewer than `limit` with a cursor to go on from.
    pub async fn list(
        &self,
        prefix: &str,
        caller: &Caller,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Lease>, Option<String>), BrokerError> {
        self.scan(prefix, caller, after, limit, limit.saturating_add(1).max(MAX_SCANNED)).await
    }

    async fn scan(
        &self,
        prefix: &str,
        caller: &Caller,
        after: Option<&str>,
        limit: usize,
        max_scanned: usize,
    ) -> Result<(Vec<Lease>, Option<String>), BrokerError> {
        assert!(limit >= 1, "a page holds at least one lease");
        // One lease past the page tells whether another page follows; the
        // store is read in batches of at least 1000, so a caller who owns
        // few of many leases costs few queries whatever its limit.
        let want = limit.saturating_add(1);
        let batch_size = want.clamp(1000, 10_000);
        let mut leases = Vec::new();
        let mut cursor = after.map(str::to_string);
        let mut scanned = 0usize;
        loop {
            let page = Page { after: cursor.as_deref(), limit: batch_size };
            let batch = self.store.list(prefix, &[LeaseState::Revoked], page).await?;
            let last_batch = batch.len() < batch_size;
            cursor = batch.last().map(|l| l.id.as_str().to_string()).or(cursor);
            scanned += batch.len();
            leases.extend(batch.into_iter().filter(|l| caller.may_touch(l)));
            if leases.len() >= want {
                leases.truncate(limit);
                let next = leases.last().map(|l| l.id.as_str().to_string());
                return Ok((leases, next));
            }
            if last_batch {
                return Ok((leases, None));
            }
            if scanned >= max_scanned {
                // Read enough for one request: go on from the last lease read.
                return Ok((leases, cursor));
            }
        }
    }

    /// Every lease under `prefix` the caller may see (revoked ones left
    /// out), for the daemon's own sweeps.
    pub async fn list_all(&self, prefix: &str, caller: &Caller) -> Result<Vec<Lease>, BrokerError> {
        Ok(self.scan(prefix, caller, None, usize::MAX, usize::MAX).await?.0)
    }
}
