//! A time-ordered set of leases that need work at some instant, kept lean
//! enough for a million leases: one `BTreeSet` of fixed-size entries, no
//! allocation per lease and no second map from id to deadline.
//!
//! An entry is the deadline in milliseconds, the lease id packed into 28
//! bytes ([`Key`]) and a tag (the expiry an `expiring` warning belongs to;
//! the attempts a retry was made for, in the expiry index): 40 or 48 bytes where a `String` id held
//! twice (in a deadline map and an id map, as the index had it before)
//! took several times that. Without the id map an entry is removed by its
//! exact `(deadline, id)`, which the caller knows for an active lease (its
//! `expires_at`); an entry nobody removed (a retry of a lease revoked in
//! the meantime) stays until it falls due, and whoever pops it re-reads the
//! lease before acting, as every revocation attempt does anyway, and drops
//! it when its tag shows a later attempt has scheduled its own.
//!
//! Start-up feeds what falls in the expiry window through
//! [`Timeline::loader`], which builds the set in one sorted pass (full
//! B-tree nodes) instead of a million single inserts (half-empty nodes
//! when the input arrives in order).
//!
//! A std mutex is right here: it is never held across an await and every
//! critical section is a few set operations (or, once, the merge of the
//! start-up set).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::lease::{LeaseId, ID_RANDOM_LEN};

/// A lease id without a heap allocation: `name` numbers a string in the
/// timeline's name table (the role, shared by all its leases) and
/// `random` holds the id's random part. An id of another shape is kept
/// whole in the table, with `random` all zero bytes, which no generated
/// random part (ASCII letters and digits) can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: u32,
    random: [u8; ID_RANDOM_LEN],
}

const WHOLE: [u8; ID_RANDOM_LEN] = [0; ID_RANDOM_LEN];

#[derive(Debug, Default)]
struct Names {
    strings: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
}

impl Names {
    fn number(&mut self, name: &str) -> u32 {
        if let Some(&n) = self.numbers.get(name) {
            return n;
        }
        let n = u32::try_from(self.strings.len()).expect("fewer than 2^32 roles");
        self.strings.push(name.into());
        self.numbers.insert(name.into(), n);
        n
    }

    fn pack(&mut self, id: &LeaseId) -> Key {
        match id.as_str().split_once('/') {
            // Only a random part of letters and digits is packed: then it can
            // never be the all-zero marker of an id kept whole.
            Some((role, random))
                if random.len() == ID_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                let mut bytes = WHOLE;
                bytes.copy_from_slice(random.as_bytes());
                Key { name: self.number(role), random: bytes }
            }
            _ => Key { name: self.number(id.as_str()), random: WHOLE },
        }
    }

    fn unpack(&self, key: &Key) -> LeaseId {
        let name = &self.strings[key.name as usize];
        if key.random == WHOLE {
            return LeaseId::from_store(name.to_string());
        }
        let random = std::str::from_utf8(&key.random).expect("packed from a str");
        LeaseId::from_store(format!("{name}/{random}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry<T> {
    at_ms: i64,
    key: Key,
    tag: T,
}

/// A deadline in whole milliseconds, rounded up: an entry never falls due
/// before its instant.
fn millis(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}

fn instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Leases by the instant they need work, each entry carrying a tag `T`.
#[derive(Debug)]
pub struct Timeline<T> {
    names: Mutex<Names>,
    entries: Mutex<BTreeSet<Entry<T>>>,
    notify: Notify,
}

impl<T> Default for Timeline<T> {
    fn default() -> Self {
        Self { names: Mutex::default(), entries: Mutex::new(BTreeSet::new()), notify: Notify::new() }
    }
}

impl<T: Ord + Copy> Timeline<T> {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&self, id: &LeaseId, at: DateTime<Utc>, tag: T) -> Entry<T> {
        Entry { at_ms: millis(at), key: self.names.lock().unwrap().pack(id), tag }
    }

    /// Adds `id` at `at` (once: the same id, instant and tag twice is one
    /// entry). An entry the lease had before stays unless removed.
    pub fn insert(&self, id: &LeaseId, at: DateTime<Utc>, tag: T) {
        let entry = self.entry(id, at, tag);
        let wake = {
            let mut entries = self.entries.lock().unwrap();
            let earliest = entries.first().is_none_or(|first| entry < *first);
            entries.insert(entry);
            earliest
        };
        if wake {
            self.notify.notify_one();
        }
    }

    /// Removes the entry of `id` at `at` with `tag`; whether there was one.
    pub fn remove(&self, id: &LeaseId, at: DateTime<Utc>, tag: T) -> bool {
        let entry = self.entry(id, at, tag);
        self.entries.lock().unwrap().remove(&entry)
    }

    /// Adds many entries at once (start-up): each packed as it is pushed,
    /// then all sorted and built into a set of full nodes, merged with what
    /// was inserted meanwhile.
    pub fn loader(&self) -> Loader<'_, T> {
        Loader { timeline: self, entries: Vec::new() }
    }

    /// Takes up to `max` entries due at or before `now`, earliest first.
    pub fn pop_due(&self, now: DateTime<Utc>, max: usize) -> Vec<(LeaseId, T)> {
        let now_ms = now.timestamp_millis();
        let due: Vec<Entry<T>> = {
            let mut entries = self.entries.lock().unwrap();
            let mut due = Vec::new();
            while due.len() < max {
                match entries.first() {
                    Some(first) if first.at_ms <= now_ms => due.push(entries.pop_first().expect("just seen")),
                    _ => break,
                }
            }
            due
        };
        if due.is_empty() {
            return Vec::new();
        }
        let names = self.names.lock().unwrap();
        due.iter().map(|e| (names.unpack(&e.key), e.tag)).collect()
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.entries.lock().unwrap().first().map(|e| instant(e.at_ms))
    }

    /// Entries held, including those no longer wanted that have not yet
    /// fallen due.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a deadline earlier than the one being slept on may
    /// have arrived. A notification sent while nobody waits is kept.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// Entries gathered for [`Timeline::loader`].
#[derive(Debug)]
pub struct Loader<'a, T> {
    timeline: &'a Timeline<T>,
    entries: Vec<Entry<T>>,
}

impl<T: Ord + Copy + Send + 'static> Loader<'_, T> {
    pub fn push(&mut self, id: &LeaseId, at: DateTime<Utc>, tag: T) {
        let entry = self.timeline.entry(id, at, tag);
        self.entries.push(entry);
    }

    /// Adds what was pushed to the timeline. The set is built on the
    /// blocking pool (a million entries take a good part of a second),
    /// so requests are served meanwhile.
    pub async fn finish(self) {
        let entries = self.entries;
        let mut built: BTreeSet<Entry<T>> =
            match tokio::task::spawn_blocking(move || entries.into_iter().collect::<BTreeSet<_>>()).await {
                Ok(built) => built,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
        {
            let mut entries = self.timeline.entries.lock().unwrap();
            // Whatever arrived during the scan (few entries) goes into the
            // bulk-built set, not the other way round.
            if built.len() > entries.len() {
                std::mem::swap(&mut *entries, &mut built);
            }
            entries.extend(built);
        }
        self.timeline.notify.notify_one();
    }
}

/// Leases by the instant they need revocation work: an active lease at
/// its expiry, a failed revocation at its next retry, a rollback now. The
/// tag is the lease's `attempts` when the entry was made ([`ANY_ATTEMPT`]
/// when unknown): a retry entry left over from before a later attempt
/// (which scheduled its own) is recognised by it and dropped, so a lease
/// never has two retry chains however often it is revoked by hand.
pub type ExpiryIndex = Timeline<u32>;

/// The tag of an entry that is acted on whatever the lease's attempts.
pub const ANY_ATTEMPT: u32 = u32::MAX;

/// A lease that fell due, with the attempts its entry was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: LeaseId,
    pub attempts: u32,
}

impl Due {
    /// Whether this entry was made for a lease that has since had
    /// `attempts` revocation attempts.
    pub fn is_current(&self, attempts: u32) -> bool {
        self.attempts == ANY_ATTEMPT || self.attempts == attempts
    }
}

impl ExpiryIndex {
    /// Schedules `id`, which has had `attempts` revocation attempts, at
    /// `at`. Moving an active lease is [`unschedule`](Self::unschedule) of
    /// its old expiry, then this.
    pub fn schedule(&self, id: &LeaseId, at: DateTime<Utc>, attempts: u32) {
        self.insert(id, at, attempts);
    }

    /// Removes the entry of `id` at `at` made for `attempts`, if there is one.
    pub fn unschedule(&self, id: &LeaseId, at: DateTime<Utc>, attempts: u32) -> bool {
        self.remove(id, at, attempts)
    }

    /// Takes up to `max` leases due at or before `now`, earliest first.
    pub fn due(&self, now: DateTime<Utc>, max: usize) -> Vec<Due> {
        self.pop_due(now, max).into_iter().map(|(id, attempts)| Due { id, attempts }).collect()
    }
}

/// How far ahead the expiry indexes reach (DESIGN §8). Every active
/// lease of this node whose expiry falls by the horizon is in the expiry
/// index, and every expiring warning that falls by it in the warning
/// index; later ones are in the store only, and are read in as the
/// horizon moves on (`broker/window.rs`). Memory then follows how many
/// leases fall due within the window, not how many there are.
///
/// A refill moves the horizon before it reads the store, and an issuance
/// or renewal checks it after its write committed: a lease is either read
/// by the refill or scheduled by its writer (or both, which is one entry).
#[derive(Debug)]
pub struct Horizon {
    until_ms: AtomicI64,
}

impl Default for Horizon {
    fn default() -> Self {
        Self { until_ms: AtomicI64::new(i64::MIN) }
    }
}

impl Horizon {
    /// Whether an entry at `at` belongs in the indexes now.
    pub fn covers(&self, at: DateTime<Utc>) -> bool {
        millis(at) <= self.until()
    }

    /// The last instant covered, in epoch milliseconds.
    pub fn until(&self) -> i64 {
        self.until_ms.load(Ordering::SeqCst)
    }

    /// Moves the horizon to `until_ms`; what it was.
    pub fn set(&self, until_ms: i64) -> i64 {
        self.until_ms.swap(until_ms, Ordering::SeqCst)
    }

    /// Whether a warning at `at` falls in `(after, until]`, as the
    /// warning index keeps it (whole milliseconds, rounded up): the store,
    /// which rounds down, is read a millisecond earlier and this picks.
    pub fn warning_in(at: DateTime<Utc>, after: i64, until: i64) -> bool {
        (after.saturating_add(1)..=until).contains(&millis(at))
    }
}

/// Active leases by the instant their `lease_expiring` event is due; the
/// tag is the expiry (epoch ms) the warning is about, so a warning made
/// stale by a renewal is recognised when it falls due.
pub type WarningIndex = Timeline<i64>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::lease::LeaseId;

    fn id(n: u32) -> LeaseId {
        LeaseId::parse(&format!("r/{n:0>22}")).unwrap()
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn pops_in_deadline_order_and_moves_when_unscheduled_first() {
        let index = ExpiryIndex::new();
        let t0 = Utc::now();
        index.schedule(&id(1), t0 + secs(30), 0);
        index.schedule(&id(2), t0 + secs(10), 0);
        index.schedule(&id(3), t0 + secs(20), 0);
        assert_eq!(index.next_deadline().map(|t| t.timestamp_millis()), Some(millis(t0 + secs(10))));
        // A renewal moves lease 2 past lease 1.
        assert!(index.unschedule(&id(2), t0 + secs(10), 0));
        index.schedule(&id(2), t0 + secs(40), 0);
        assert_eq!(index.len(), 3);
        assert_eq!(
            index.due(t0 + secs(35), 10),
            vec![Due { id: id(3), attempts: 0 }, Due { id: id(1), attempts: 0 }]
        );
        assert!(!index.unschedule(&id(2), t0 + secs(40), 1), "another attempt's entry");
        assert!(index.unschedule(&id(2), t0 + secs(40), 0));
        assert!(!index.unschedule(&id(2), t0 + secs(40), 0));
        assert!(index.is_empty());
    }

    #[test]
    fn entries_stay_small() {
        // What a million leases cost in each index, before B-tree overhead.
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 40);
        assert_eq!(std::mem::size_of::<Entry<i64>>(), 48);
    }

    #[test]
    fn the_same_entry_twice_is_one() {
        let index = ExpiryIndex::new();
        let at = Utc::now();
        index.schedule(&id(1), at, 2);
        index.schedule(&id(1), at, 2);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn never_falls_due_before_its_instant() {
        let index = ExpiryIndex::new();
        let at = DateTime::from_timestamp_millis(1_000).unwrap() + chrono::Duration::microseconds(300);
        index.schedule(&id(1), at, 0);
        assert!(index.due(DateTime::from_timestamp_millis(1_000).unwrap(), 10).is_empty());
        assert_eq!(index.due(DateTime::from_timestamp_millis(1_001).unwrap(), 10)[0].id, id(1));
    }

    #[test]
    fn ids_of_any_shape_come_back_as_they_went_in() {
        let index = ExpiryIndex::new();
        let at = Utc::now() - secs(1);
        let ids: Vec<LeaseId> = ["pg-ro/abc", "pg-ro/0123456789abcdefghijKL", "x/0123456789abcdefghijKLmn"]
            .iter()
            .map(|raw| LeaseId::parse(raw).unwrap())
            // From a damaged store: a random part of the packed length
            // that is not letters and digits is kept whole, not mistaken
            // for the marker of a whole id.
            .chain([LeaseId::from_store(format!("r/{}", "\0".repeat(ID_RANDOM_LEN)))])
            .chain([crate::lease::new_id("pg-ro"), crate::lease::new_id("other")])
            .collect();
        for i in &ids {
            index.schedule(i, at, 0);
        }
        let mut back: Vec<LeaseId> = index.due(Utc::now(), 10).into_iter().map(|d| d.id).collect();
        let mut want = ids.clone();
        back.sort();
        want.sort();
        assert_eq!(back, want);
    }

    #[test]
    fn pop_respects_max() {
        let index = ExpiryIndex::new();
        let past = Utc::now() - secs(1);
        for n in 0..10 {
            index.schedule(&id(n), past, 0);
        }
        assert_eq!(index.due(Utc::now(), 4).len(), 4);
        assert_eq!(index.len(), 6);
    }

    #[tokio::test]
    async fn load_merges_with_what_was_scheduled_meanwhile() {
        let index = WarningIndex::new();
        let t0 = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        index.insert(&id(0), t0 + secs(5), 7);
        let mut loader = index.loader();
        for n in (1..=1000).rev() {
            loader.push(&id(n), t0 + secs(n as i64 * 10), n as i64);
        }
        loader.finish().await;
        index.insert(&id(1001), t0 + secs(1), 1001);
        assert_eq!(index.len(), 1002);
        let due = index.pop_due(t0 + secs(20), 10);
        assert_eq!(due, vec![(id(1001), 1001), (id(0), 7), (id(1), 1), (id(2), 2)]);
    }

    #[tokio::test]
    async fn earlier_deadline_wakes_the_sleeper() {
        let index = Arc::new(ExpiryIndex::new());
        index.schedule(&id(1), Utc::now() + chrono::Duration::hours(1), 0);
        index.changed().await; // the first schedule stored a wake-up
        let waiter = tokio::spawn({
            let index = index.clone();
            async move { index.changed().await }
        });
        index.schedule(&id(2), Utc::now(), 0);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
