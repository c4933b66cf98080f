//! The embedded lease store: one SQLite file in WAL mode, for a single node.
//!
//! One thread owns the write connection. Callers send it a write and a
//! oneshot reply over a bounded channel; the thread takes everything queued
//! (up to [`MAX_BATCH`]), applies it in one transaction, commits once and only
//! then answers every caller, so one fsync (`synchronous = FULL`) serves many
//! requests. Each write runs inside its own savepoint: one that fails (a
//! duplicate id) is undone alone and the rest of the batch still commits.
//!
//! Reads run on a small pool of separate connections inside
//! `spawn_blocking`; WAL lets them proceed while the writer commits. Reads
//! of one lease by id are gathered, many to a transaction ([`gets`]).
//!
//! Times are stored as Unix epoch milliseconds, so they come back truncated
//! to the millisecond. The schema lives in `schemas/sql/sqlite/`, one file per
//! migration, and `PRAGMA user_version` records how many have run.

use std::collections::HashSet;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::mpsc;

mod statics;
mod writer;

#[cfg(test)]
use writer::commit_batch;
use writer::run_writer;

use super::jobs::Queue;
use super::{
    Cursor, LeaseStore, Page, Span, SpanPage, StaticClaim, StaticRecord, StoreError, Unfinished, Write,
};
use crate::lease::{Lease, LeaseId, LeaseState, Owner};

/// Migrations in order; migration `n` (1-based) brings `user_version` to `n`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../schemas/sql/sqlite/0001_leases.sql"),
    include_str!("../../../schemas/sql/sqlite/0002_unique_usernames.sql"),
    include_str!("../../../schemas/sql/sqlite/0003_static_accounts.sql"),
    include_str!("../../../schemas/sql/sqlite/0004_owner_policy_and_idempotency.sql"),
    include_str!("../../../schemas/sql/sqlite/0005_static_claim_token.sql"),
    include_str!("../../../schemas/sql/sqlite/0006_owner_unit.sql"),
    include_str!("../../../schemas/sql/sqlite/0007_expiry_window.sql"),
];

/// Writes waiting for the writer before `write` callers wait for room.
const QUEUE: usize = 4096;
/// Most writes committed in one transaction; bounds how long a batch holds
/// the write lock and how late its first caller hears back.
const MAX_BATCH: usize = 1000;
/// How long a connection waits for a lock held by another one.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle read connections kept open; more are opened under load and closed after.
const MAX_IDLE_READERS: usize = 4;

/// Selects every column of `leases` in the order [`lease_from_row`] reads them.
macro_rules! select_leases {
    ($($tail:literal),*) => {
        concat!(
            "SELECT id, role, connection, username, state, issued_at, expires_at, max_expires_at, \
             renewable, attempts, last_error, owner_uid, owner_gid, owner_pid, plugin_data, revoked_at, \
             owner_policy, idempotency, owner_unit FROM leases ",
            $($tail),*
        )
    };
}

mod gets;

/// The embedded SQLite lease store. Cheap to share behind an `Arc`; dropping
/// the last handle lets the writer finish what is queued and close the file.
pub struct SqliteStore {
    path: PathBuf,
    jobs: Queue,
    readers: Arc<Readers>,
    gets: Arc<gets::Gets>,
    read_slots: tokio::sync::Semaphore,
    commits: Arc<AtomicU64>,
    writer: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema
    /// up to date. Missing parent directories are created with mode 0700 and
    /// a new file with mode 0600. Blocks: call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |message: String| StoreError::Open { location: path.display().to_string(), message };

        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| fail(format!("cannot create directory {}: {e}", parent.display())))?;
        }
        // SQLite gives the -wal and -shm files the mode of the database file,
        // so creating it ourselves keeps all three private.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;

        // Before anything touches the file: a second daemon on the same
        // store would roll back the first one's pending leases as crashed.
        let lock = lock_store(path).map_err(&fail)?;
        let mut conn = open_writer(path).map_err(&fail)?;
        migrate(&mut conn).map_err(&fail)?;

        let readers = Arc::new(Readers { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) });
        // Open one reader now so that a file readers cannot use fails here.
        let reader = open_reader(path).map_err(|e| fail(e.to_string()))?;
        readers.release(reader);

        let commits = Arc::new(AtomicU64::new(0));
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer = {
            let commits = Arc::clone(&commits);
            let path = path.to_path_buf();
            thread::Builder::new()
                .name("lessor-store-writer".into())
                .spawn(move || {
                    run_writer(conn, queue, &commits, &path);
                    // Released only once the last write is committed and
                    // the connection closed.
                    drop(lock);
                })
                .map_err(|e| fail(format!("cannot start the writer thread: {e}")))?
        };

        let read_slots = tokio::sync::Semaphore::new(MAX_IDLE_READERS);
        Ok(Self {
            path: path.to_path_buf(),
            jobs: Queue(jobs),
            readers,
            gets: Arc::default(),
            read_slots,
            commits,
            writer: Some(writer),
        })
    }

    /// Opens the store named by `sqlite:///absolute/path.db` or
    /// `sqlite://relative/path.db` (relative to the working directory).
    pub fn open_url(url: &str) -> Result<Self, StoreError> {
        let path = url_path(url).ok_or_else(|| StoreError::Open {
            location: url.to_string(),
            message: "expected sqlite:///absolute/path.db or sqlite://relative/path.db".into(),
        })?;
        Self::open(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops taking writes, waits until the writer has committed everything
    /// already queued and closed its connection.
    pub async fn close(mut self) -> Result<(), StoreError> {
        let writer = self.writer.take();
        let path = self.path.clone();
        drop(self);
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| StoreError::Io(format!("{}: the writer thread panicked", path.display())))?;
        }
        Ok(())
    }

    /// A page of `active` leases whose `key` (an expression of the row,
    /// indexed by `index` for `state = 'active'`) falls in `span`, in
    /// `(key, id)` order from `from` on. The index is named: without
    /// statistics (lessor never runs `ANALYZE`) SQLite would pick the one
    /// on `state` and sort every active lease; and the cursor is spelled
    /// so both of its bounds narrow the index's range (a row value does not
    /// on an expression).
    async fn span_page(
        &self,
        key: &'static str,
        index: &'static str,
        span: Span,
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<SpanPage, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = from.cloned();
        self.read(move |conn| {
            let columns = format!(
                "SELECT {key}, id, state, issued_at, expires_at, attempts, renewed_at FROM leases INDEXED BY {index}"
            );
            let mut statement;
            let rows = match &from {
                None => {
                    statement = conn.prepare_cached(&format!(
                        "{columns} WHERE state = 'active' AND {key} > ?1 AND {key} <= ?2 \
                         ORDER BY {key}, id LIMIT ?3"
                    ))?;
                    statement.query_map(params![span.after, span.until, limit], span_row)?
                }
                Some(cursor) => {
                    statement = conn.prepare_cached(&format!(
                        "{columns} WHERE state = 'active' AND {key} >= ?1 AND ({key} > ?1 OR id > ?4) \
                         AND {key} <= ?2 ORDER BY {key}, id LIMIT ?3"
                    ))?;
                    statement.query_map(params![cursor.at, span.until, limit, cursor.id], span_row)?
                }
            };
            let page = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            let next = (page.len() as i64 == limit).then(|| page.last().map(|(c, _)| c.clone())).flatten();
            Ok((page.into_iter().map(|(_, u)| u).collect(), next))
        })
        .await
    }

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // At most MAX_IDLE_READERS reads at once: a burst of revocations
        // then queues here instead of opening a connection (and occupying a
        // blocking thread) per read.
        let _slot = self.read_slots.acquire().await.map_err(|_| StoreError::Closed)?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.run(query))
            .await
            .map_err(|e| StoreError::Io(format!("{}: read task failed: {e}", self.path.display())))?
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn write(&self, write: Write) -> Result<bool, StoreError> {
        self.jobs.write(write).await
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError> {
        self.gets.get(&self.readers, id.as_str()).await
    }

    async fn list(
        &self,
        prefix: &str,
        exclude: &[LeaseState],
        page: Page<'_>,
    ) -> Result<Vec<Lease>, StoreError> {
        // A range on the primary key instead of LIKE: uses the index, and
        // `_`, `%` and case in the prefix mean nothing special. The page
        // starts after its cursor, on the same index.
        // One lower bound, so the page starts with a seek wherever it is:
        // the cursor when it is inside the prefix's range, else the prefix.
        let (lower, inclusive) = match page.after {
            Some(after) if after >= prefix => (after.to_owned(), false),
            _ => (prefix.to_owned(), true),
        };
        let upper = prefix_upper_bound(prefix);
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let exclude =
            serde_json::Value::from(exclude.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string();
        self.read(move |conn| {
            let mut statement;
            let rows = match (upper, inclusive) {
                (Some(upper), true) => {
                    statement = conn.prepare_cached(select_leases!(
                        "WHERE id >= ?1 AND id < ?2 ",
                        "AND state NOT IN (SELECT value FROM json_each(?3)) ORDER BY id LIMIT ?4"
                    ))?;
                    statement.query_map(params![lower, upper, exclude, limit], lease_from_row)?
                }
                (Some(upper), false) => {
                    statement = conn.prepare_cached(select_leases!(
                        "WHERE id > ?1 AND id < ?2 ",
                        "AND state NOT IN (SELECT value FROM json_each(?3)) ORDER BY id LIMIT ?4"
                    ))?;
                    statement.query_map(params![lower, upper, exclude, limit], lease_from_row)?
                }
                (None, true) => {
                    statement = conn.prepare_cached(select_leases!(
                        "WHERE id >= ?1 ",
                        "AND state NOT IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3"
                    ))?;
                    statement.query_map(params![lower, exclude, limit], lease_from_row)?
                }
                (None, false) => {
                    statement = conn.prepare_cached(select_leases!(
                        "WHERE id > ?1 ",
                        "AND state NOT IN (SELECT value FROM json_each(?2)) ORDER BY id LIMIT ?3"
                    ))?;
                    statement.query_map(params![lower, exclude, limit], lease_from_row)?
                }
            };
            rows.collect()
        })
        .await
    }

    async fn settling(&self, after: Option<&LeaseId>, limit: usize) -> Result<Vec<Unfinished>, StoreError> {
        let after = after.map_or(String::new(), |id| id.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT 0, id, state, issued_at, expires_at, attempts, renewed_at FROM leases \
                 INDEXED BY leases_settling \
                 WHERE state IN ('pending', 'revoking', 'irrevocable') AND id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit], unfinished_from_row)?
            .collect()
        })
        .await
    }

    async fn expiring(
        &self,
        span: Span,
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<SpanPage, StoreError> {
        self.span_page("expires_at", "leases_active_expiry", span, from, limit).await
    }

    async fn warned(&self, span: Span, from: Option<&Cursor>, limit: usize) -> Result<SpanPage, StoreError> {
        self.span_page(super::WARNING_AT_SQL, "leases_active_warning", span, from, limit).await
    }

    async fn leased_usernames(
        &self,
        usernames: &[String],
        revoked_since: DateTime<Utc>,
    ) -> Result<HashSet<String>, StoreError> {
        if usernames.is_empty() {
            return Ok(HashSet::new());
        }
        // One statement however many names: a JSON array, each value looked
        // up through the index on username.
        let names = serde_json::Value::from(usernames.to_vec()).to_string();
        let since = revoked_since.timestamp_millis();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT DISTINCT username FROM leases WHERE username IN (SELECT value FROM json_each(?1)) \
                 AND (state <> 'revoked' OR revoked_at IS NULL OR revoked_at >= ?2)",
            )?
            .query_map(params![names, since], |row| row.get(0))?
            .collect()
        })
        .await
    }

    async fn live_counts(&self) -> Result<Vec<(String, Option<String>, u64)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT role, owner_policy, count(*) FROM leases WHERE state <> 'revoked' \
                 GROUP BY role, owner_policy",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect()
        })
        .await
    }

    async fn unit_bound(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(select_leases!(
                "INDEXED BY leases_owner_unit WHERE owner_unit IS NOT NULL AND state = 'active'"
            ))?
            .query_map([], lease_from_row)?
            .collect()
        })
        .await
    }

    async fn find_idempotent(&self, digest: &str) -> Result<Option<Lease>, StoreError> {
        let digest = digest.to_string();
        self.read(move |conn| {
            conn.prepare_cached(select_leases!("WHERE idempotency = ?1 ORDER BY issued_at DESC LIMIT 1"))?
                .query_row([digest], lease_from_row)
                .optional()
        })
        .await
    }

    async fn count_by_role_and_state(&self) -> Result<Vec<(String, LeaseState, u64)>, StoreError> {
        // A full scan (no index leads with the role) on a reader: WAL keeps the writer going.
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT role, state, count(*) FROM leases GROUP BY 1, 2")?;
            let rows = statement.query_map([], |row| {
                let state = LeaseState::parse(&row.get::<_, String>(1)?);
                let state = state.ok_or_else(|| bad_value(1, Type::Text, "unknown state".into()))?;
                Ok((row.get(0)?, state, row.get::<_, u64>(2)?))
            })?;
            rows.collect()
        })
        .await
    }

    async fn purge_revoked(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // Through the writer: it deletes, in the order of the other writes.
        self.jobs.purge(before).await
    }

    async fn static_get(&self, name: &str) -> Result<Option<StaticRecord>, StoreError> {
        let name = name.to_string();
        self.read(move |conn| statics::get(conn, &name)).await
    }

    async fn static_names(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT name FROM static_accounts ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect()
        })
        .await
    }

    async fn static_put(&self, record: StaticRecord) -> Result<(), StoreError> {
        self.jobs.static_put(record).await
    }

    async fn static_write(&self, record: StaticRecord, claim: &StaticClaim) -> Result<(), StoreError> {
        self.jobs.static_write(record, claim).await
    }

    async fn static_claim(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<StaticClaim>, StoreError> {
        self.jobs.static_claim(name, holder, ttl).await
    }

    async fn static_renew(&self, claim: &StaticClaim, ttl: std::time::Duration) -> Result<bool, StoreError> {
        self.jobs.static_renew(claim, ttl).await
    }

    async fn static_release(&self, claim: &StaticClaim) -> Result<(), StoreError> {
        self.jobs.static_release(claim).await
    }

    /// One per batch the writer committed.
    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// The path in a `sqlite://` url, if the url is one.
fn url_path(url: &str) -> Option<&Path> {
    let path = url.strip_prefix("sqlite://")?;
    // A query (`?mode=rwc`) would otherwise silently become part of the file name.
    (!path.is_empty() && !path.contains('?')).then(|| Path::new(path))
}

/// The least string greater than every string that starts with `prefix`
/// (None when there is none, e.g. for ""). SQLite compares text bytewise and
/// UTF-8 preserves code point order, so bumping the last char that can be
/// bumped is enough.
pub(super) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Takes the store's exclusive lock: `flock` on `<store>.lock` beside it,
/// which the kernel releases when the process dies, however it dies. The
/// holder's pid is written into the file so a refused daemon can name it.
fn lock_store(path: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write as _};
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("another lessor (pid {pid})"),
                Err(_) => "another lessor".to_string(),
            };
            return Err(format!(
                "{holder} is using this store (lock {}); only one daemon may use a store",
                lock_path.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(format!("cannot lock {}: {e}", lock_path.display()));
        }
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"))
        .map_err(|e| format!("cannot write {}: {e}", lock_path.display()))?;
    Ok(file)
}

fn open_writer(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| format!("cannot set the journal mode: {e}"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot use WAL journal mode (the file stays in {mode} mode)"));
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| e.to_string())?;
    conn.pragma_update(None, "foreign_keys", true).map_err(|e| e.to_string())?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// Runs the migrations the file has not seen, all in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let latest = MIGRATIONS.len() as i64;
    let user_version = |conn: &Connection| -> Result<i64, String> {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| format!("cannot read the schema version: {e}"))
    };
    if user_version(conn)? == latest {
        return Ok(());
    }
    // Re-read under the write lock: another process may be migrating too.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
    let version = user_version(&tx)?;
    if !(0..=latest).contains(&version) {
        return Err(format!("schema version {version} is unknown to this lessor (latest is {latest})"));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(|e| format!("migration {}: {e}", index + 1))?;
    }
    tx.pragma_update(None, "user_version", latest).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| format!("cannot commit the migrations: {e}"))
}

/// Reads a row of a span: columns `key, id, state, issued_at, expires_at,
/// attempts`, with the cursor it ends at.
fn span_row(row: &Row<'_>) -> rusqlite::Result<(Cursor, Unfinished)> {
    let unfinished = unfinished_from_row(row)?;
    Ok((Cursor { at: row.get(0)?, id: unfinished.id.to_string() }, unfinished))
}

/// Reads a row of the start-up or window reads: columns `(key,) id,
/// state, issued_at, expires_at, attempts, renewed_at`.
fn unfinished_from_row(row: &Row<'_>) -> rusqlite::Result<Unfinished> {
    let state: String = row.get(2)?;
    Ok(Unfinished {
        id: LeaseId::from_store(row.get(1)?),
        state: LeaseState::parse(&state)
            .ok_or_else(|| bad_value(2, Type::Text, format!("unknown state {state:?}")))?,
        issued_at: time_at(row, 3)?,
        expires_at: time_at(row, 4)?,
        attempts: row.get(5)?,
        renewed_at: row.get::<_, Option<i64>>(6)?.map(|_| time_at(row, 6)).transpose()?,
        node: None,
    })
}

fn bad_value(index: usize, kind: Type, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, kind, message.into())
}

/// An epoch-milliseconds column as a time.
fn time_at(row: &Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let millis: i64 = row.get(index)?;
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| bad_value(index, Type::Integer, format!("bad time {millis}")))
}

/// Reads a row selected by [`select_leases!`].
fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    let bad = bad_value;
    let time = |index: usize| time_at(row, index);
    let state: String = row.get(4)?;
    let plugin_data: Option<String> = row.get(14)?;
    let revoked_at: Option<i64> = row.get(15)?;
    Ok(Lease {
        id: LeaseId::from_store(row.get(0)?),
        role: row.get(1)?,
        connection: row.get(2)?,
        username: row.get(3)?,
        state: LeaseState::parse(&state)
            .ok_or_else(|| bad(4, Type::Text, format!("unknown state {state:?}")))?,
        issued_at: time(5)?,
        expires_at: time(6)?,
        max_expires_at: time(7)?,
        renewable: row.get(8)?,
        attempts: row.get(9)?,
        last_error: row.get(10)?,
        owner: Owner {
            uid: row.get(11)?,
            gid: row.get(12)?,
            pid: row.get(13)?,
            policy: row.get(16)?,
            node: None,
            unit: row.get(18)?,
        },
        plugin_data: plugin_data
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| bad(14, Type::Text, format!("bad plugin data: {e}")))
            })
            .transpose()?,
        revoked_at: revoked_at
            .map(|millis| {
                DateTime::from_timestamp_millis(millis)
                    .ok_or_else(|| bad(15, Type::Integer, format!("bad time {millis}")))
            })
            .transpose()?,
        idempotency: row.get(17)?,
    })
}

/// Read connections, reused. A std mutex: it is held only to push or pop.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Runs `query` on an idle connection (or a new one). Blocks.
    fn run<T>(&self, query: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let failed = |e: rusqlite::Error| StoreError::Io(format!("{}: {e}", self.path.display()));
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(failed)?,
        };
        let result = query(&conn).map_err(failed);
        self.release(conn);
        result
    }

    fn release(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests;
