//! A batch's writes of one kind as one statement: every insert of the
//! batch in one `INSERT … SELECT FROM unnest(…)`, every activation
//! in one `UPDATE … FROM unnest(…)`, and so for the revocations' writes.
//! What a write costs the server is mostly its statement's: parsing the
//! message, starting the executor, the trigger's call. One statement for
//! the batch's every issuance pays that once (BENCHMARKS.md, "The shared
//! store's statements").
//!
//! Each statement returns the ids it changed, and each write's answer is
//! whether its id is among them: the answer its own statement would have
//! given. A write alone of its kind in its batch keeps its plain one-row
//! statement (`writer.rs`): as a one-element `unnest` it cost the server
//! more (BENCHMARKS.md, "The shared store's statements"). Only writes to
//! leases no other write of the batch touches are grouped; the rest (and every kind that is rare) go one statement each,
//! in their order, after the groups. Moving a write ahead of another on a
//! different lease may change which of the two sees the other (a purge, a
//! username freed and taken), but every write of a batch is in flight at
//! once, and each caller is answered only after the commit: any order of
//! them is one they could have arrived in.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{Client, Statement};

use crate::store::jobs::Job;
use crate::store::{StoreError, Write};

/// The kinds of write that are grouped: an issuance's two, and a
/// revocation's two.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) enum Kind {
    Insert,
    Activate,
    StartRevoking,
    Revoked,
}

impl Kind {
    fn of(write: &Write) -> Option<Self> {
        match write {
            Write::Insert(_) => Some(Self::Insert),
            Write::Activate { .. } => Some(Self::Activate),
            Write::StartRevoking { .. } => Some(Self::StartRevoking),
            Write::Revoked { .. } => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// A part of a batch, sent as one statement: the indexes of its jobs in
/// the batch.
pub(super) enum Part {
    One(usize),
    Group(Kind, Vec<usize>),
}

/// Splits `batch` into statements: a group per kind for the writes whose
/// lease no other write of the batch touches (when there are two or more
/// of them), one statement for each other job. Groups come first; the
/// jobs left alone keep their order.
pub(super) fn plan(batch: &[Job]) -> Vec<Part> {
    let mut writes_per_lease: HashMap<&str, usize> = HashMap::new();
    for job in batch {
        if let Job::Write(write, _) = job {
            *writes_per_lease.entry(write.id().as_str()).or_default() += 1;
        }
    }
    let mut groups: Vec<(Kind, Vec<usize>)> = Vec::new();
    let mut alone = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        let kind = match job {
            Job::Write(write, _) if writes_per_lease[write.id().as_str()] == 1 => Kind::of(write),
            _ => None,
        };
        match kind {
            Some(kind) => match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, members)) => members.push(i),
                None => groups.push((kind, vec![i])),
            },
            None => alone.push(i),
        }
    }
    let mut parts = Vec::with_capacity(groups.len() + alone.len());
    for (kind, members) in groups {
        match members[..] {
            [one] => alone.push(one),
            _ => parts.push(Part::Group(kind, members)),
        }
    }
    alone.sort_unstable();
    parts.extend(alone.into_iter().map(Part::One));
    parts
}

/// The grouped statements, prepared once per connection. Each takes one
/// array per column and returns the ids it changed.
pub(super) struct Statements {
    insert: Statement,
    activate: Statement,
    start_revoking: Statement,
    revoked: Statement,
}

impl Statements {
    pub(super) async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        // A custom plan sees how long the arrays are, and for a large batch
        // on a small table picks a scan of the whole table; the generic
        // plan looks each id up in the primary key, which is what every
        // statement of the writer wants (`plan_cache_mode` is PostgreSQL
        // 12's: an older server plans as it did).
        client
            .batch_execute(
                "SELECT set_config('plan_cache_mode', 'force_generic_plan', false) \
                 WHERE current_setting('server_version_num')::int >= 120000",
            )
            .await?;
        Ok(Self {
            insert: client
                .prepare(
                    "INSERT INTO leases (id, role, connection, username, state, issued_at, expires_at, \
                     max_expires_at, renewable, attempts, last_error, owner_uid, owner_gid, owner_pid, \
                     plugin_data, revoked_at, owner_policy, idempotency, owner_unit, node) \
                     SELECT t.*, $20 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::boolean[], $10::integer[], $11::text[], \
                     $12::bigint[], $13::bigint[], $14::integer[], $15::jsonb[], $16::bigint[], $17::text[], \
                     $18::text[], $19::text[]) AS t \
                     ON CONFLICT DO NOTHING RETURNING id",
                )
                .await?,
            // Fenced as the single writes are (writer.rs): only while this
            // node ($4) holds the lease's claim or nobody does.
            activate: client
                .prepare(
                    "UPDATE leases l SET state = 'active', plugin_data = t.data, \
                     expires_at = coalesce(t.expires_at, l.expires_at), claimed_by = NULL, claim_until = NULL \
                     FROM unnest($1::text[], $2::jsonb[], $3::bigint[]) AS t(id, data, expires_at) \
                     WHERE l.id = t.id AND l.state = 'pending' AND (l.claimed_by IS NULL OR l.claimed_by = $4) \
                     RETURNING l.id",
                )
                .await?,
            start_revoking: client
                .prepare(
                    "UPDATE leases l SET state = 'revoking', retry_at = $3 \
                     FROM unnest($1::text[]) AS t(id) \
                     WHERE l.id = t.id AND l.state IN ('pending', 'active', 'irrevocable') \
                     AND (l.claimed_by IS NULL OR l.claimed_by = $2) \
                     RETURNING l.id",
                )
                .await?,
            revoked: client
                .prepare(
                    "UPDATE leases l SET state = 'revoked', revoked_at = t.at, claimed_by = NULL, \
                     claim_until = NULL \
                     FROM unnest($1::text[], $2::bigint[]) AS t(id, at) \
                     WHERE l.id = t.id AND l.state <> 'revoked' AND (l.claimed_by IS NULL OR l.claimed_by = $3) \
                     RETURNING l.id",
                )
                .await?,
        })
    }
}

/// Applies the writes `members` of `batch` (all of `kind`) as one
/// statement, sent at the future's first poll; each one's outcome, in
/// order: the rows it changed (0 or 1), a duplicate for an insert that
/// found its id or username taken, or the statement's failure for all.
pub(super) async fn apply(
    client: &Client,
    st: &Statements,
    kind: Kind,
    batch: &[Job],
    members: &[usize],
    node: &str,
) -> Vec<Result<u64, StoreError>> {
    let writes: Vec<&Write> = members
        .iter()
        .map(|&i| match &batch[i] {
            Job::Write(write, _) => write,
            _ => unreachable!("only lease writes are grouped"),
        })
        .collect();
    let ids: Vec<&str> = writes.iter().map(|w| w.id().as_str()).collect();
    let changed = match kind {
        Kind::Insert => insert(client, st, &writes, &ids, node).await,
        Kind::Activate => {
            let mut data = Vec::with_capacity(writes.len());
            let mut expiries = Vec::with_capacity(writes.len());
            for write in &writes {
                if let Write::Activate { plugin_data, expires_at, .. } = write {
                    data.push(plugin_data.as_ref());
                    expiries.push(expires_at.map(|t| t.timestamp_millis()));
                }
            }
            client.query(&st.activate, &[&ids, &data, &expiries, &node]).await
        }
        Kind::StartRevoking => {
            client.query(&st.start_revoking, &[&ids, &node, &chrono::Utc::now().timestamp_millis()]).await
        }
        Kind::Revoked => {
            let at: Vec<i64> = writes
                .iter()
                .map(|w| match w {
                    Write::Revoked { at, .. } => at.timestamp_millis(),
                    _ => unreachable!("a group holds one kind"),
                })
                .collect();
            client.query(&st.revoked, &[&ids, &at, &node]).await
        }
    };
    let changed: HashSet<String> = match changed {
        Ok(rows) => rows.iter().map(|row| row.get(0)).collect(),
        Err(e) => {
            let message = format!("{} {} lease(s), {} first: {e}", kind.doing(), ids.len(), ids[0]);
            return writes.iter().map(|_| Err(StoreError::Io(message.clone()))).collect();
        }
    };
    writes
        .iter()
        .map(|write| match (changed.contains(write.id().as_str()), write) {
            (true, _) => Ok(1),
            (false, Write::Insert(lease)) => Err(StoreError::Duplicate(lease.id.clone())),
            (false, _) => Ok(0),
        })
        .collect()
}

impl Kind {
    /// For messages: what the statement was doing.
    fn doing(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Activate => "activate",
            Self::StartRevoking => "start revoking",
            Self::Revoked => "mark revoked",
        }
    }
}

/// The inserts, one array per column.
async fn insert(
    client: &Client,
    st: &Statements,
    writes: &[&Write],
    ids: &[&str],
    node: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let leases: Vec<_> = writes
        .iter()
        .map(|w| match w {
            Write::Insert(lease) => lease,
            _ => unreachable!("a group holds one kind"),
        })
        .collect();
    let column = |f: &dyn Fn(&crate::lease::Lease) -> i64| leases.iter().map(|l| f(l)).collect::<Vec<i64>>();
    let roles: Vec<&str> = leases.iter().map(|l| l.role.as_str()).collect();
    let connections: Vec<&str> = leases.iter().map(|l| l.connection.as_str()).collect();
    let usernames: Vec<&str> = leases.iter().map(|l| l.username.as_str()).collect();
    let states: Vec<&str> = leases.iter().map(|l| l.state.as_str()).collect();
    let issued = column(&|l| l.issued_at.timestamp_millis());
    let expires = column(&|l| l.expires_at.timestamp_millis());
    let max_expires = column(&|l| l.max_expires_at.timestamp_millis());
    let renewable: Vec<bool> = leases.iter().map(|l| l.renewable).collect();
    let attempts: Vec<i32> = leases.iter().map(|l| l.attempts as i32).collect();
    let errors: Vec<Option<&str>> = leases.iter().map(|l| l.last_error.as_deref()).collect();
    let uids = column(&|l| i64::from(l.owner.uid));
    let gids = column(&|l| i64::from(l.owner.gid));
    let pids: Vec<Option<i32>> = leases.iter().map(|l| l.owner.pid).collect();
    let data: Vec<Option<&serde_json::Value>> = leases.iter().map(|l| l.plugin_data.as_ref()).collect();
    let revoked: Vec<Option<i64>> =
        leases.iter().map(|l| l.revoked_at.map(|t| t.timestamp_millis())).collect();
    let policies: Vec<Option<&str>> = leases.iter().map(|l| l.owner.policy.as_deref()).collect();
    let idempotency: Vec<Option<&str>> = leases.iter().map(|l| l.idempotency.as_deref()).collect();
    let units: Vec<Option<&str>> = leases.iter().map(|l| l.owner.unit.as_deref()).collect();
    client
        .query(
            &st.insert,
            &[
                &ids,
                &roles,
                &connections,
                &usernames,
                &states,
                &issued,
                &expires,
                &max_expires,
                &renewable,
                &attempts,
                &errors,
                &uids,
                &gids,
                &pids,
                &data,
                &revoked,
                &policies,
                &idempotency,
                &units,
                &node,
            ],
        )
        .await
}
