//! Per-lease async locks: operations on one lease (issue, renew, revoke,
//! an expiry) are serialised, so a revoke that arrives while the lease is
//! still being issued waits for the issuance instead of racing it in the
//! backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::lease::LeaseId;

/// Per-lease async locks, created on demand and dropped when unused.
#[derive(Debug, Default)]
pub(crate) struct LeaseLocks {
    map: Mutex<HashMap<LeaseId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one lease's lock; removes the entry from the map when last out.
pub(crate) struct LeaseGuard<'a> {
    locks: &'a LeaseLocks,
    id: LeaseId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl LeaseLocks {
    pub(crate) async fn lock(&self, id: &LeaseId) -> LeaseGuard<'_> {
        let mutex = self.map.lock().unwrap().entry(id.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        LeaseGuard { locks: self, id: id.clone(), guard: Some(guard) }
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap();
        if let Some(entry) = map.get(&self.id) {
            // Only the map holds it: nobody waits, so forget it.
            if Arc::strong_count(entry) == 1 {
                map.remove(&self.id);
            }
        }
    }
}
