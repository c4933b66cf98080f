//! The lease store on PostgreSQL, for a fleet of nodes sharing one store
//! (DESIGN §8). The broker cannot tell it from the SQLite store: both
//! implement [`LeaseStore`] with the same semantics, times in epoch
//! milliseconds included.
//!
//! Writes go through one writer task that owns one connection: it takes
//! every queued write (up to [`MAX_BATCH`]), sends them pipelined in one
//! transaction, commits once and only then answers every caller (group
//! commit), so a node's issuances share round trips and commits instead of
//! paying one each. Reads use a small deadpool of other connections.
//!
//! The schema lives in `schemas/sql/postgres/`; migrations run in one
//! transaction under an advisory lock, so nodes starting together do not
//! race. Each lease records the node that issued it (`server.node_id`);
//! what lets several live nodes share the work (the node lock and
//! heartbeat, claims, the sweep, `LISTEN/NOTIFY`) is in [`cluster`].

mod claims;
mod cluster;
mod groups;
mod writer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_postgres::Row;

use super::jobs::Queue;
use super::{
    Claim, Cursor, LeaseStore, Page, PendingRotation, RotationPhase, SealedCredential, Span, SpanPage,
    StaticClaim, StaticRecord, StoreError, Unfinished, Write,
};
use crate::lease::{Lease, LeaseId, LeaseState, Owner};

/// Migrations in order; migration `n` (1-based) brings the recorded
/// version to `n`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../schemas/sql/postgres/0001_leases.sql"),
    include_str!("../../../schemas/sql/postgres/0002_nodes.sql"),
    include_str!("../../../schemas/sql/postgres/0003_static_claim_token.sql"),
    include_str!("../../../schemas/sql/postgres/0004_owner_unit.sql"),
    include_str!("../../../schemas/sql/postgres/0005_no_notice_when_a_lease_ends.sql"),
    include_str!("../../../schemas/sql/postgres/0006_expiry_window.sql"),
    include_str!("../../../schemas/sql/postgres/0007_no_username_index.sql"),
];

/// The advisory lock key migrations run under (any fixed number will do;
/// this one spells "lessor").
const MIGRATION_LOCK: i64 = 0x6c65_7373_6f72;

/// How old a node's heartbeat may be before it counts as dead, unless
/// set with [`PostgresStore::with_node_timeout`] (`server.node_timeout`).
pub const DEFAULT_NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long opening the store waits for this node's lock.
const NODE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Writes waiting for the writer before `write` callers wait for room.
const QUEUE: usize = 4096;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1000;
/// Read connections (which also take claims and heartbeat).
const READERS: usize = 4;
/// How long the store lets a session sit inside a transaction waiting for
/// its node (`idle_in_transaction_session_timeout`). A node's writer never
/// waits between its statements, so this only ends the transaction of a
/// node that stopped (frozen, or cut off) mid-write, whose row locks would
/// otherwise keep the other nodes from its leases for as long as it is
/// stopped.
const IDLE_IN_TRANSACTION_MS: u32 = 5_000;
/// How long a claim waits for a row another transaction holds before it
/// answers that the lease is busy (`lock_timeout` of the read pool).
pub(super) const CLAIM_LOCK_WAIT_MS: u32 = 2_000;

/// Every column of `leases` a [`Lease`] holds, in the order
/// [`lease_from_row`] reads them.
macro_rules! lease_columns {
    () => {
        "id, role, connection, username, state, issued_at, expires_at, max_expires_at, renewable, \
         attempts, last_error, owner_uid, owner_gid, owner_pid, plugin_data, revoked_at, owner_policy, \
         idempotency, node, owner_unit"
    };
}
pub(super) const LEASE_COLUMNS: &str = lease_columns!();
const SELECT_LEASES: &str = concat!("SELECT ", lease_columns!(), " FROM leases ");

/// The PostgreSQL lease store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    /// The URL without its password, for messages.
    location: String,
    node: String,
    /// How old a heartbeat may be before its node counts as dead.
    timeout: std::time::Duration,
    /// This host's name and when this daemon started (epoch ms), for `nodes`.
    host: String,
    started_at: i64,
    jobs: Queue,
    readers: Pool,
    claims: claims::Claims,
    commits: Arc<AtomicU64>,
    /// For the listening connection.
    config: tokio_postgres::Config,
    tls: lessor_postgres::PgTls,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .field("node", &self.node)
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the store at `url` (`postgres://user@host:port/db`,
    /// libpq's key/value form works too) with `password`, brings its schema
    /// up to date, takes `node`'s lock (a second live daemon with the same
    /// node id is refused), records its first heartbeat and starts the
    /// writer. Leases written are recorded as issued by `node`.
    pub async fn open(url: &str, password: Option<&SecretString>, node: &str) -> Result<Self, StoreError> {
        // TLS as for a `[connections]` entry: libpq's sslmode and files in
        // the URL, full verification by default towards a host not local.
        let (mut config, tls) = lessor_postgres::connection_for_url(url)
            .map_err(|message| StoreError::Open { location: redact_url(url), message })?;
        if let Some(password) = password {
            config.password(password.expose_secret());
        }
        config.application_name(format!("lessor {node}"));
        add_options(&mut config, &format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"));
        let location = location(&config);
        let fail = |message: String| StoreError::Open { location: location.clone(), message };

        let (mut client, driver) = tls.connect(&config).await.map_err(|e| fail(connect_error(&e)))?;
        migrate(&mut client).await.map_err(&fail)?;
        // A daemon of this node that just died may still hold the lock
        // for the instant its session takes to end: a few tries.
        let deadline = std::time::Instant::now() + NODE_LOCK_WAIT;
        while let Err(e) = cluster::take_node_lock(&client, node).await {
            if std::time::Instant::now() >= deadline {
                return Err(fail(e));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // What the pool writes (claims, heartbeats, events) may be lost in
        // a crash of the store without harm: a lost claim is fenced like a
        // lapsed one, a lost heartbeat is the next one. So it need not
        // wait for the WAL flush; the leases themselves go through the
        // writer, which does.
        // A claim waits for a row lock at most CLAIM_LOCK_WAIT_MS.
        let mut pool_config = config.clone();
        add_options(
            &mut pool_config,
            &format!("-c synchronous_commit=off -c lock_timeout={CLAIM_LOCK_WAIT_MS}"),
        );
        let readers = Pool::builder(tls.manager(pool_config))
            .max_size(READERS)
            .build()
            .map_err(|e| fail(e.to_string()))?;

        let commits = Arc::new(AtomicU64::new(0));
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(writer::run(writer::Writer {
            config: config.clone(),
            tls: tls.clone(),
            client: Some((client, driver)),
            statements: None,
            queue,
            commits: Arc::clone(&commits),
            location: location.clone(),
            node: node.to_string(),
        }));
        let store = Self {
            location: location.clone(),
            node: node.to_string(),
            timeout: DEFAULT_NODE_TIMEOUT,
            host: crate::config::ServerConfig::host_name(),
            started_at: Utc::now().timestamp_millis(),
            jobs: Queue(jobs),
            claims: claims::Claims::start(readers.clone(), location.clone(), node.to_string()),
            readers,
            commits,
            config,
            tls,
        };
        crate::store::cluster::Cluster::heartbeat(&store).await.map_err(|e| fail(e.to_string()))?;
        Ok(store)
    }

    /// How old a node's heartbeat may be before it counts as dead, and
    /// another node takes over its work (`server.node_timeout`).
    pub fn with_node_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The node this store writes leases as.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(format!("{}: {what}: {e}", self.location))
    }

    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        query(&self.readers, &self.location, what, sql, params).await
    }

    /// A page of `active` leases whose `key` (an expression of the row,
    /// indexed for `state = 'active'`) falls in `span`, in `(key, id)`
    /// order from `from` on; only this node's when `mine`.
    async fn span_page(
        &self,
        what: &str,
        key: &str,
        mine: bool,
        span: Span,
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<SpanPage, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = from.map_or(span.after, |cursor| cursor.at);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&after, &span.until, &limit];
        let mut filter = String::new();
        if mine {
            params.push(&self.node);
            filter = format!("node = ${} AND ", params.len());
        }
        // The first page starts after `span.after`, whatever the id; the
        // next ones after the cursor's (key, id).
        match from {
            Some(cursor) => {
                params.push(&cursor.id);
                filter += &format!("({key}, id) > ($1, ${})", params.len());
            }
            None => filter += &format!("{key} > $1"),
        }
        // Only columns the index carries (the state is its predicate), so
        // the read need not visit the table.
        let sql = format!(
            "SELECT {key}, id, 'active', issued_at, expires_at, attempts, node, renewed_at FROM leases \
             WHERE state = 'active' AND {filter} AND {key} <= $2 ORDER BY {key}, id LIMIT $3"
        );
        let rows = self.query(what, &sql, &params).await?;
        let page = rows.iter().map(|row| self.unfinished(row)).collect::<Result<Vec<_>, _>>()?;
        let next = (page.len() as i64 == limit).then(|| page.last().map(|(c, _)| c.clone())).flatten();
        Ok((page.into_iter().map(|(_, u)| u).collect(), next))
    }

    /// Reads a row of columns `key, id, state, issued_at, expires_at,
    /// attempts, node, renewed_at`, with the cursor it ends at.
    fn unfinished(&self, row: &Row) -> Result<(Cursor, Unfinished), StoreError> {
        let state: String = row.get(2);
        let unfinished = Unfinished {
            id: LeaseId::from_store(row.get(1)),
            state: LeaseState::parse(&state)
                .ok_or_else(|| self.failed("scan", format!("unknown state {state:?}")))?,
            issued_at: time(row.get(3)).map_err(|e| self.failed("scan", e))?,
            expires_at: time(row.get(4)).map_err(|e| self.failed("scan", e))?,
            attempts: row.get::<_, i32>(5) as u32,
            node: Some(row.get(6)),
            renewed_at: row
                .get::<_, Option<i64>>(7)
                .map(time)
                .transpose()
                .map_err(|e| self.failed("scan", e))?,
        };
        Ok((Cursor { at: row.get(0), id: unfinished.id.to_string() }, unfinished))
    }

    fn leases(&self, rows: Vec<Row>) -> Result<Vec<Lease>, StoreError> {
        rows.iter().map(|row| lease_from_row(row).map_err(|e| self.failed("read a lease", e))).collect()
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn write(&self, write: Write) -> Result<bool, StoreError> {
        self.jobs.write(write).await
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<Lease>, StoreError> {
        let rows =
            self.query("read a lease", &format!("{SELECT_LEASES} WHERE id = $1"), &[&id.as_str()]).await?;
        Ok(self.leases(rows)?.pop())
    }

    async fn claim(&self, id: &LeaseId) -> Result<Claim, StoreError> {
        Ok(self.claim_lease(id, false).await?.0)
    }

    async fn claim_to_revoke(&self, id: &LeaseId) -> Result<(Claim, bool), StoreError> {
        self.claim_lease(id, true).await
    }

    async fn release(&self, id: &LeaseId) -> Result<(), StoreError> {
        self.release_lease(id).await
    }

    fn cluster(&self) -> Option<&dyn crate::store::cluster::Cluster> {
        Some(self)
    }

    async fn list(
        &self,
        prefix: &str,
        exclude: &[LeaseState],
        page: Page<'_>,
    ) -> Result<Vec<Lease>, StoreError> {
        // A range on the primary key (byte order: COLLATE "C"), starting
        // after the cursor when it is inside the prefix's range.
        let (lower, inclusive) = match page.after {
            Some(after) if after >= prefix => (after.to_owned(), false),
            _ => (prefix.to_owned(), true),
        };
        let upper = super::sqlite::prefix_upper_bound(prefix);
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let exclude: Vec<&str> = exclude.iter().map(|s| s.as_str()).collect();
        let lower_op = if inclusive { ">=" } else { ">" };
        let sql = format!(
            "{SELECT_LEASES} WHERE id {lower_op} $1 AND ($2::text IS NULL OR id < $2) \
             AND NOT (state = ANY($3)) ORDER BY id LIMIT $4"
        );
        let rows = self.query("list leases", &sql, &[&lower, &upper, &exclude, &limit]).await?;
        self.leases(rows)
    }

    async fn settling(&self, after: Option<&LeaseId>, limit: usize) -> Result<Vec<Unfinished>, StoreError> {
        let after = after.map_or("", |id| id.as_str());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "read leases still settling",
                // Through the partial indexes of pending leases by node and of
                // retries (an index of their own, which every issuance would
                // enter while pending, costs issuance a third of its rate).
                "SELECT 0::bigint, id, state, issued_at, expires_at, attempts, node, renewed_at FROM ( \
                   SELECT * FROM leases WHERE state = 'pending' AND node = $1 \
                   UNION ALL \
                   SELECT * FROM leases WHERE state IN ('revoking', 'irrevocable') AND node = $1 \
                 ) AS settling WHERE id > $2 ORDER BY id LIMIT $3",
                &[&self.node, &after, &limit],
            )
            .await?;
        rows.iter().map(|row| self.unfinished(row).map(|(_, u)| u)).collect()
    }

    async fn expiring(
        &self,
        span: Span,
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<SpanPage, StoreError> {
        self.span_page("read leases by expiry", "expires_at", false, span, from, limit).await
    }

    async fn warned(&self, span: Span, from: Option<&Cursor>, limit: usize) -> Result<SpanPage, StoreError> {
        self.span_page("read leases by warning", super::WARNING_AT_SQL, true, span, from, limit).await
    }

    async fn leased_usernames(
        &self,
        usernames: &[String],
        revoked_since: DateTime<Utc>,
    ) -> Result<HashSet<String>, StoreError> {
        if usernames.is_empty() {
            return Ok(HashSet::new());
        }
        let since = revoked_since.timestamp_millis();
        // Through the unique index on (connection, username), there being
        // no index on the username alone: the connections the store holds
        // leases of, each found by one step through the index (a loose
        // scan), then each name under each of them.
        let rows = self
            .query(
                "find leased usernames",
                "WITH RECURSIVE connections(name) AS ( \
                     SELECT min(connection) FROM leases \
                     UNION ALL \
                     SELECT (SELECT min(connection) FROM leases WHERE connection > name) \
                     FROM connections WHERE name IS NOT NULL) \
                 SELECT DISTINCT l.username FROM connections c JOIN leases l ON l.connection = c.name \
                 WHERE l.username = ANY($1) \
                 AND (l.state <> 'revoked' OR l.revoked_at IS NULL OR l.revoked_at >= $2)",
                &[&usernames, &since],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn live_counts(&self) -> Result<Vec<(String, Option<String>, u64)>, StoreError> {
        let rows = self
            .query(
                "count live leases",
                "SELECT role, owner_policy, count(*) FROM leases WHERE state <> 'revoked' AND node = $1 \
                 GROUP BY role, owner_policy",
                &[&self.node],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64)).collect())
    }

    async fn unit_bound(&self) -> Result<Vec<Lease>, StoreError> {
        let sql = format!("{SELECT_LEASES} WHERE owner_unit IS NOT NULL AND state = 'active' AND node = $1");
        let rows = self.query("list leases delivered to units", &sql, &[&self.node]).await?;
        self.leases(rows)
    }

    async fn find_idempotent(&self, digest: &str) -> Result<Option<Lease>, StoreError> {
        let sql = format!("{SELECT_LEASES} WHERE idempotency = $1 ORDER BY issued_at DESC LIMIT 1");
        let rows = self.query("find an idempotent lease", &sql, &[&digest]).await?;
        Ok(self.leases(rows)?.pop())
    }

    async fn count_by_role_and_state(&self) -> Result<Vec<(String, LeaseState, u64)>, StoreError> {
        let rows =
            self.query("count leases", "SELECT role, state, count(*) FROM leases GROUP BY 1, 2", &[]).await?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(1);
                let state = LeaseState::parse(&state)
                    .ok_or_else(|| self.failed("count", format!("unknown state {state:?}")))?;
                Ok((r.get(0), state, r.get::<_, i64>(2) as u64))
            })
            .collect()
    }

    async fn purge_revoked(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // Through the writer: it deletes, in the order of the other writes.
        self.jobs.purge(before).await
    }

    async fn static_get(&self, name: &str) -> Result<Option<StaticRecord>, StoreError> {
        let rows = self
            .query(
                "read a static account",
                "SELECT name, version, current_username, current_sealed, rotated_at, previous_username, \
                 previous_valid_until, previous_end_sessions, pending_version, pending_username, pending_sealed, \
                 pending_phase, pending_reason, pending_overlap_ms, next_rotation_at, failures, last_error \
                 FROM static_accounts WHERE name = $1",
                &[&name],
            )
            .await?;
        rows.first()
            .map(|row| static_from_row(row).map_err(|e| self.failed("read a static account", e)))
            .transpose()
    }

    async fn static_names(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            self.query("list static accounts", "SELECT name FROM static_accounts ORDER BY name", &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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

    async fn check(&self) -> Result<(), StoreError> {
        let probe = async {
            let client = self.readers.get().await.map_err(|e| self.failed("reach the store", e))?;
            client.simple_query("SELECT 1").await.map_err(|e| self.failed("reach the store", e)).map(drop)
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), probe)
            .await
            .unwrap_or_else(|_| Err(self.failed("reach the store", "no answer within 2 s")))
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

/// A failed connection in words: what a TLS handshake failure means
/// (unknown issuer, name mismatch, …) when it is one.
pub(super) fn connect_error(e: &tokio_postgres::Error) -> String {
    match lessor_plugin::tls::explain(e) {
        Some(why) => format!("{e}: {why}"),
        None => e.to_string(),
    }
}

/// Where the store is, for messages: user, host, port and database, never
/// a password.
fn location(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// A URL with any password taken out, for a message about a URL that did
/// not parse.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ if url.contains("password") => "(a URL with a password)".into(),
        _ => url.to_string(),
    }
}

/// Runs the migrations the store has not seen, in one transaction under
/// an advisory lock (another node may be starting too).
async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| e.to_string())?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS lessor_schema (version INTEGER NOT NULL)")
        .await
        .map_err(|e| format!("cannot create the schema version table: {e}"))?;
    let version: i32 =
        match tx.query_opt("SELECT version FROM lessor_schema", &[]).await.map_err(|e| e.to_string())? {
            Some(row) => row.get(0),
            None => {
                tx.execute("INSERT INTO lessor_schema (version) VALUES (0)", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                0
            }
        };
    let latest = MIGRATIONS.len() as i32;
    if !(0..=latest).contains(&version) {
        return Err(format!("schema version {version} is unknown to this lessor (latest is {latest})"));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(|e| format!("migration {}: {e}", index + 1))?;
    }
    tx.execute("UPDATE lessor_schema SET version = $1", &[&latest]).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| format!("cannot commit the migrations: {e}"))
}

pub(super) fn time(millis: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| format!("bad time {millis}"))
}

/// Adds server settings (`-c name=value …`) to those the URL's `options` set.
fn add_options(config: &mut tokio_postgres::Config, more: &str) {
    let options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
    config.options(format!("{options}{more}"));
}

/// Runs `sql` on a connection of `readers` (statements prepared once per
/// connection); a failure names the store and `what` was being done.
async fn query(
    readers: &Pool,
    location: &str,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Io(format!("{location}: {what}: {e}"));
    let client = readers.get().await.map_err(|e| failed(&e))?;
    let statement = client.prepare_cached(sql).await.map_err(|e| failed(&e))?;
    client.query(&statement, params).await.map_err(|e| failed(&e))
}

pub(super) fn lease_from_row(row: &Row) -> Result<Lease, String> {
    let state: String = row.get(4);
    let revoked_at: Option<i64> = row.get(15);
    Ok(Lease {
        id: LeaseId::from_store(row.get(0)),
        role: row.get(1),
        connection: row.get(2),
        username: row.get(3),
        state: LeaseState::parse(&state).ok_or_else(|| format!("unknown state {state:?}"))?,
        issued_at: time(row.get(5))?,
        expires_at: time(row.get(6))?,
        max_expires_at: time(row.get(7))?,
        renewable: row.get(8),
        attempts: row.get::<_, i32>(9) as u32,
        last_error: row.get(10),
        owner: Owner {
            uid: row.get::<_, i64>(11) as u32,
            gid: row.get::<_, i64>(12) as u32,
            pid: row.get(13),
            policy: row.get(16),
            node: row.get(18),
            unit: row.get(19),
        },
        plugin_data: row.get(14),
        revoked_at: revoked_at.map(time).transpose()?,
        idempotency: row.get(17),
    })
}

fn static_from_row(row: &Row) -> Result<StaticRecord, String> {
    let opt_time = |index: usize| row.get::<_, Option<i64>>(index).map(time).transpose();
    let credential = |user: usize, sealed: usize| {
        let username: Option<String> = row.get(user);
        let sealed: Option<Vec<u8>> = row.get(sealed);
        username.zip(sealed).map(|(username, sealed)| SealedCredential { username, sealed })
    };
    let pending = match (row.get::<_, Option<i64>>(8), credential(9, 10), row.get::<_, Option<String>>(11)) {
        (Some(version), Some(credential), Some(phase)) => Some(PendingRotation {
            version: version as u64,
            credential,
            phase: RotationPhase::parse(&phase).ok_or_else(|| format!("unknown phase {phase:?}"))?,
            reason: row.get(12),
            overlap_ms: row.get::<_, Option<i64>>(13).unwrap_or(0) as u64,
        }),
        _ => None,
    };
    Ok(StaticRecord {
        name: row.get(0),
        version: row.get::<_, i64>(1) as u64,
        current: credential(2, 3),
        rotated_at: opt_time(4)?,
        previous_username: row.get(5),
        previous_valid_until: opt_time(6)?,
        previous_end_sessions: row.get(7),
        pending,
        next_rotation_at: opt_time(14)?,
        failures: row.get::<_, i32>(15) as u32,
        last_error: row.get(16),
    })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_password_in_the_url_never_reaches_a_message() {
        assert_eq!(redact_url("postgres://lessor:s3cret@db:5432/x"), "postgres://lessor@db:5432/x");
        assert_eq!(redact_url("host=db password=s3cret"), "(a URL with a password)");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}
