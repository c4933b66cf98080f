//! A count of things open per key, each key at most a cap: a uid's
//! connections to the socket, its `GET /v1/watch` streams.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Things open per key (a uid's connections, its watch streams), at most
/// `cap` per key.
#[derive(Debug)]
pub struct PerKey<K> {
    cap: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Copy> PerKey<K> {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { cap, open: Mutex::default() })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// One more for `key`, or `None` when it has `cap` open.
    pub fn take(self: &Arc<Self>, key: K) -> Option<KeySlot<K>> {
        let mut open = self.open.lock().expect("per-key counts lock");
        let n = open.entry(key).or_default();
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(KeySlot(self.clone(), key))
    }
}

/// One of a key's open things; counted until dropped.
#[derive(Debug)]
pub struct KeySlot<K: Hash + Eq + Copy>(Arc<PerKey<K>>, K);

impl<K: Hash + Eq + Copy> Drop for KeySlot<K> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().expect("per-key counts lock");
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}
