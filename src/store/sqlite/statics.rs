//! The `static_accounts` table: one row per static account, written
//! through the store's writer thread like every lease write, read through
//! its reader connections.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::store::jobs::StaticWrite;
use crate::store::{PendingRotation, RotationPhase, SealedCredential, StaticRecord, StoreError};

/// Applies one write; rows changed (a refused claim changes none).
pub(super) fn apply(conn: &Connection, write: &StaticWrite, path: &Path) -> Result<u64, StoreError> {
    let failed = |what: &str, e: rusqlite::Error| StoreError::Io(format!("{}: {what}: {e}", path.display()));
    let millis = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
    match write {
        StaticWrite::Put(r) => {
            let pending = r.pending.as_ref();
            conn.prepare_cached(
                "INSERT INTO static_accounts (name, version, current_username, current_sealed, rotated_at, \
                 previous_username, previous_valid_until, previous_end_sessions, pending_version, \
                 pending_username, pending_sealed, pending_phase, pending_reason, pending_overlap_ms, \
                 next_rotation_at, failures, last_error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
                 ON CONFLICT (name) DO UPDATE SET version = ?2, current_username = ?3, current_sealed = ?4, \
                 rotated_at = ?5, previous_username = ?6, previous_valid_until = ?7, \
                 previous_end_sessions = ?8, pending_version = ?9, pending_username = ?10, \
                 pending_sealed = ?11, pending_phase = ?12, pending_reason = ?13, pending_overlap_ms = ?14, \
                 next_rotation_at = ?15, failures = ?16, last_error = ?17",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.name,
                    r.version as i64,
                    r.current.as_ref().map(|c| &c.username),
                    r.current.as_ref().map(|c| &c.sealed),
                    millis(r.rotated_at),
                    r.previous_username,
                    millis(r.previous_valid_until),
                    r.previous_end_sessions,
                    pending.map(|p| p.version as i64),
                    pending.map(|p| &p.credential.username),
                    pending.map(|p| &p.credential.sealed),
                    pending.map(|p| p.phase.as_str()),
                    pending.and_then(|p| p.reason.as_ref()),
                    pending.map(|p| p.overlap_ms as i64),
                    millis(r.next_rotation_at),
                    r.failures,
                    r.last_error,
                ])
            })
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("record static account {}", r.name), e))
        }
        StaticWrite::Claim { name, holder, now, until } => conn
            .prepare_cached(
                "INSERT INTO static_accounts (name, version, claimed_by, claim_until) VALUES (?1, 0, ?2, ?4) \
                 ON CONFLICT (name) DO UPDATE SET claimed_by = ?2, claim_until = ?4 \
                 WHERE claimed_by IS NULL OR claimed_by = ?2 OR claim_until < ?3",
            )
            .and_then(|mut s| s.execute(params![name, holder, now, until]))
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("claim static account {name}"), e)),
        StaticWrite::Release { name, holder } => conn
            .prepare_cached(
                "UPDATE static_accounts SET claimed_by = NULL, claim_until = NULL WHERE name = ?1 AND claimed_by = ?2",
            )
            .and_then(|mut s| s.execute(params![name, holder]))
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("release static account {name}"), e)),
    }
}

/// One account's row.
pub(super) fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<StaticRecord>> {
    conn.prepare_cached(
        "SELECT name, version, current_username, current_sealed, rotated_at, previous_username, \
         previous_valid_until, previous_end_sessions, pending_version, pending_username, pending_sealed, \
         pending_phase, pending_reason, pending_overlap_ms, next_rotation_at, failures, last_error \
         FROM static_accounts WHERE name = ?1",
    )?
    .query_row([name], from_row)
    .optional()
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<StaticRecord> {
    let bad = |index: usize, message: String| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, message.into())
    };
    let time = |index: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
        let millis: Option<i64> = row.get(index)?;
        millis
            .map(|m| DateTime::from_timestamp_millis(m).ok_or_else(|| bad(index, format!("bad time {m}"))))
            .transpose()
    };
    let credential = |user: usize, sealed: usize| -> rusqlite::Result<Option<SealedCredential>> {
        let username: Option<String> = row.get(user)?;
        let sealed: Option<Vec<u8>> = row.get(sealed)?;
        Ok(username.zip(sealed).map(|(username, sealed)| SealedCredential { username, sealed }))
    };
    let pending = match (row.get::<_, Option<i64>>(8)?, credential(9, 10)?, row.get::<_, Option<String>>(11)?)
    {
        (Some(version), Some(credential), Some(phase)) => Some(PendingRotation {
            version: version as u64,
            credential,
            phase: RotationPhase::parse(&phase).ok_or_else(|| bad(11, format!("unknown phase {phase:?}")))?,
            reason: row.get(12)?,
            overlap_ms: row.get::<_, Option<i64>>(13)?.unwrap_or(0) as u64,
        }),
        _ => None,
    };
    Ok(StaticRecord {
        name: row.get(0)?,
        version: row.get::<_, i64>(1)? as u64,
        current: credential(2, 3)?,
        rotated_at: time(4)?,
        previous_username: row.get(5)?,
        previous_valid_until: time(6)?,
        previous_end_sessions: row.get(7)?,
        pending,
        next_rotation_at: time(14)?,
        failures: row.get(15)?,
        last_error: row.get(16)?,
    })
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;

    use crate::store::{LeaseStore, SqliteStore};

    use super::*;

    #[tokio::test]
    async fn a_static_record_round_trips_and_claims_exclude_other_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("leases.db")).unwrap();
        assert_eq!(store.static_get("billing").await.unwrap(), None);
        let now = Utc::now().trunc_subsecs(3);
        let mut record = StaticRecord::new("billing");
        record.version = 3;
        record.current = Some(SealedCredential { username: "billing_a".into(), sealed: vec![1, 2, 3] });
        record.rotated_at = Some(now);
        record.previous_username = Some("billing_b".into());
        record.previous_valid_until = Some(now + chrono::Duration::hours(1));
        record.pending = Some(PendingRotation {
            version: 4,
            credential: SealedCredential { username: "billing_b".into(), sealed: vec![9; 40] },
            phase: RotationPhase::Set,
            reason: Some("laptop stolen".into()),
            overlap_ms: 0,
        });
        record.failures = 2;
        record.last_error = Some("login failed".into());
        store.static_put(record.clone()).await.unwrap();
        assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()));

        let later = now + chrono::Duration::seconds(30);
        assert!(store.static_claim("billing", "node-a", now, later).await.unwrap());
        assert!(store.static_claim("billing", "node-a", now, later).await.unwrap(), "its own claim");
        assert!(!store.static_claim("billing", "node-b", now, later).await.unwrap(), "claimed by another");
        store.static_release("billing", "node-b").await.unwrap();
        assert!(
            !store.static_claim("billing", "node-b", now, later).await.unwrap(),
            "released by a non-holder"
        );
        let expired = later + chrono::Duration::seconds(1);
        assert!(store.static_claim("billing", "node-b", expired, expired).await.unwrap(), "after expiry");
        // A claim keeps the state; a put keeps the claim.
        assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()));
        record.pending = None;
        store.static_put(record.clone()).await.unwrap();
        assert!(!store.static_claim("billing", "node-a", now, later).await.unwrap());
        store.static_release("billing", "node-b").await.unwrap();
        assert!(store.static_claim("billing", "node-a", now, later).await.unwrap(), "released");
        // A claim on an account with no row yet makes one.
        assert!(store.static_claim("reports", "node-a", now, later).await.unwrap());
        assert_eq!(store.static_get("reports").await.unwrap(), Some(StaticRecord::new("reports")));
    }
}
