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
        StaticWrite::Put(r, claim) => {
            let pending = r.pending.as_ref();
            let values = params![
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
                claim.as_ref().map(|c| &c.holder),
                claim.as_ref().map(|c| c.token),
            ];
            // Under a claim the row exists (the claim made it) and is
            // written only while it carries the claim's token: a refused
            // write changes no row.
            let (sql, values) = match claim {
                Some(_) => (
                    "UPDATE static_accounts SET version = ?2, current_username = ?3, current_sealed = ?4, \
                     rotated_at = ?5, previous_username = ?6, previous_valid_until = ?7, \
                     previous_end_sessions = ?8, pending_version = ?9, pending_username = ?10, \
                     pending_sealed = ?11, pending_phase = ?12, pending_reason = ?13, pending_overlap_ms = ?14, \
                     next_rotation_at = ?15, failures = ?16, last_error = ?17 \
                     WHERE name = ?1 AND claimed_by = ?18 AND claim_token = ?19",
                    values,
                ),
                None => (
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
                    &values[..17],
                ),
            };
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(values))
                .map(|n| n as u64)
                .map_err(|e| failed(&format!("record static account {}", r.name), e))
        }
        // One node uses the embedded store: its own clock is the store's.
        StaticWrite::Claim { claim, ttl_ms } => conn
            .prepare_cached(
                "INSERT INTO static_accounts (name, version, claimed_by, claim_until, claim_token) \
                 VALUES (?1, 0, ?2, ?3 + ?4, ?5) \
                 ON CONFLICT (name) DO UPDATE SET claimed_by = ?2, claim_until = ?3 + ?4, claim_token = ?5 \
                 WHERE claimed_by IS NULL OR claimed_by = ?2 OR claim_until < ?3",
            )
            .and_then(|mut s| {
                s.execute(params![
                    claim.name,
                    claim.holder,
                    Utc::now().timestamp_millis(),
                    ttl_ms,
                    claim.token
                ])
            })
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("claim static account {}", claim.name), e)),
        StaticWrite::Renew { claim, ttl_ms } => conn
            .prepare_cached(
                "UPDATE static_accounts SET claim_until = ?3 + ?4 \
                 WHERE name = ?1 AND claimed_by = ?2 AND claim_token = ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    claim.name,
                    claim.holder,
                    Utc::now().timestamp_millis(),
                    ttl_ms,
                    claim.token
                ])
            })
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("renew the claim on static account {}", claim.name), e)),
        StaticWrite::Release(claim) => conn
            .prepare_cached(
                "UPDATE static_accounts SET claimed_by = NULL, claim_until = NULL, claim_token = NULL \
                 WHERE name = ?1 AND claimed_by = ?2 AND claim_token = ?3",
            )
            .and_then(|mut s| s.execute(params![claim.name, claim.holder, claim.token]))
            .map(|n| n as u64)
            .map_err(|e| failed(&format!("release static account {}", claim.name), e)),
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
    async fn a_static_record_round_trips_and_claims_exclude_and_fence_other_holders() {
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

        let ttl = std::time::Duration::from_secs(30);
        let a = store.static_claim("billing", "node-a", ttl).await.unwrap().expect("nobody holds it");
        let again = store.static_claim("billing", "node-a", ttl).await.unwrap().expect("its own claim");
        assert_ne!(a.token, again.token, "every grant has a new token");
        assert_eq!(store.static_claim("billing", "node-b", ttl).await.unwrap(), None, "claimed by another");
        // The first grant is fenced off by the second, even for one holder.
        assert!(!store.static_renew(&a, ttl).await.unwrap());
        assert!(matches!(
            store.static_write(record.clone(), &a).await,
            Err(StoreError::ClaimLost { ref name, ref holder }) if name == "billing" && holder == "node-a"
        ));
        store.static_release(&a).await.unwrap();
        assert_eq!(
            store.static_claim("billing", "node-b", ttl).await.unwrap(),
            None,
            "released by a stale grant"
        );
        assert!(store.static_renew(&again, ttl).await.unwrap());
        record.failures = 3;
        store.static_write(record.clone(), &again).await.unwrap();
        assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()));

        // A claim that lapsed is taken; the old holder's writes are refused.
        let short =
            store.static_claim("billing", "node-a", std::time::Duration::ZERO).await.unwrap().unwrap();
        let b = loop {
            if let Some(b) = store.static_claim("billing", "node-b", ttl).await.unwrap() {
                break b;
            }
            assert!(Utc::now() < now + chrono::Duration::seconds(20), "the lapsed claim was never taken");
            tokio::task::yield_now().await;
        };
        let mut stale = record.clone();
        stale.pending = None;
        stale.version = 9;
        assert!(matches!(store.static_write(stale, &short).await, Err(StoreError::ClaimLost { .. })));
        assert!(!store.static_renew(&short, ttl).await.unwrap());
        store.static_release(&short).await.unwrap();
        assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()), "nothing changed");
        assert_eq!(store.static_claim("billing", "node-a", ttl).await.unwrap(), None, "still node-b's");
        // A write without a claim (copying a store) keeps the claim.
        record.pending = None;
        store.static_put(record.clone()).await.unwrap();
        store.static_write(record.clone(), &b).await.unwrap();
        store.static_release(&b).await.unwrap();
        assert!(store.static_claim("billing", "node-a", ttl).await.unwrap().is_some(), "released");
        // A claim on an account with no row yet makes one.
        assert!(store.static_claim("reports", "node-a", ttl).await.unwrap().is_some());
        assert_eq!(store.static_get("reports").await.unwrap(), Some(StaticRecord::new("reports")));
    }
}
