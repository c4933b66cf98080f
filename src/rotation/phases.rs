//! One account's rotation, as re-entrant steps: each first looks at what
//! the store says already happened, so a retry or a crash mid-way is
//! harmless (the shape of AWS Secrets Manager's rotation functions).
//!
//! ```text
//!            create            set              test            promote
//!  (none) ──────────▶ created ─────▶ set ─────────────▶ tested ─────────▶ current
//!                       │  ▲  backend   │ login fails:                     │ old current
//!                       └──┘  failed:   ▼ roll back, retry later           ▼
//!                        retry later  (none)                   previous ──(overlap)──▶ retired
//! ```
//! Every arrow is a durable write before the next backend step, made under
//! the account's claim ([`super::claim`]): a run whose claim was taken over
//! is refused the write and stops, and checks the claim before every
//! backend step, so it never sets, rolls back or retires anything after. Retiring
//! the previous credential of an `alternating` account gives its user a
//! random password nobody knows (and, after a rotation with no overlap,
//! ends its sessions). A `dual_password` account's one user gets the new
//! password beside the old (`set` adds it); retiring leaves it the current
//! password alone.

use chrono::{DateTime, Utc};
use lessor_plugin::{names, Plugin, PluginError};
use rand::Rng;
use secrecy::SecretString;
use tracing::{info, warn};

use super::claim::Held;
use super::{is_root, RotationError, Rotator};
use crate::config::{Duration, StaticAccount, Strategy};
use crate::store::{PendingRotation, RotationPhase, SealedCredential, StaticRecord, StoreError};

/// Why an account's rotation runs.
#[derive(Debug, Clone)]
pub(super) enum Trigger {
    /// Whatever the stored state says is due: a first rotation, one a crash
    /// interrupted, a scheduled one, a retry, a retirement.
    Due,
    /// An operator asked, now.
    Operator { reason: Option<String>, overlap: Duration },
}

/// What a sealed secret is bound to (the AEAD's associated data).
pub(super) fn seal_context(account: &str, version: u64, username: &str) -> String {
    format!("lessor static account\0{account}\0{version}\0{username}")
}

/// When the account next needs work, if ever.
pub(super) fn due_at(record: &StaticRecord) -> Option<DateTime<Utc>> {
    let retry_or_now = || {
        if record.failures > 0 {
            record.next_rotation_at.unwrap_or(DateTime::<Utc>::MIN_UTC)
        } else {
            DateTime::<Utc>::MIN_UTC
        }
    };
    let rotation = if record.pending.is_some() {
        Some(retry_or_now())
    } else if record.version == 0 {
        Some(record.next_rotation_at.unwrap_or(DateTime::<Utc>::MIN_UTC))
    } else {
        record.next_rotation_at
    };
    [rotation, record.previous_valid_until].into_iter().flatten().min()
}

/// How long a rotation waits after its `failures`-th failure in a row:
/// 1 s, 2 s, 4 s … capped at 10 min, ±20 % jitter.
fn retry_in(failures: u32) -> std::time::Duration {
    let base = std::time::Duration::from_secs(1 << failures.saturating_sub(1).min(10))
        .min(std::time::Duration::from_secs(600));
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Counts a failure in `record` and moves whatever made the account due
/// (a rotation to start or resume, a credential to retire) to the retry
/// time, so the scheduler does not retry at once. Returns the wait.
fn note_failure(record: &mut StaticRecord, error: &str) -> std::time::Duration {
    record.failures = record.failures.saturating_add(1);
    record.last_error = Some(error.to_string());
    let wait = retry_in(record.failures);
    let now = Utc::now();
    let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
    let rotation_due =
        record.pending.is_some() || record.version == 0 || record.next_rotation_at.is_some_and(|t| t <= now);
    if rotation_due {
        record.next_rotation_at = Some(at);
    }
    if record.previous_valid_until.is_some_and(|t| t <= now) {
        // It keeps working until it is retired.
        record.previous_valid_until = Some(at);
    }
    wait
}

/// The next scheduled slot after `now`, with the account's jitter.
fn next_slot(account: &StaticAccount, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let at = account.schedule.next_after(Some(now), now)?;
    let jitter_ms = account.jitter.as_std().as_millis() as i64;
    let jitter = if jitter_ms > 0 { rand::rng().random_range(0..jitter_ms) } else { 0 };
    Some(at + chrono::Duration::milliseconds(jitter))
}

impl Rotator {
    /// Does what is due for `account` (or what the operator asked), under
    /// the account's claim in the store.
    pub(super) async fn run(&self, account: &StaticAccount, trigger: Trigger) -> Result<(), RotationError> {
        let name = &account.name;
        let Some(held) = Held::take(&self.store, &self.tasks, name, &self.holder, self.claim_ttl).await?
        else {
            return Err(RotationError::InProgress { name: name.clone() });
        };
        let result = self.run_claimed(account, trigger, &held).await;
        match &result {
            Err(RotationError::ClaimLost { .. }) => {
                warn!(account = %name, holder = %self.holder, "lost the rotation claim to another node or run: stopped without another backend step or write");
                // Not released: it is someone else's now.
                return result;
            }
            Err(e @ (RotationError::Seal(_) | RotationError::Store(_))) => {
                self.note_other_failure(account, e, &held).await;
            }
            _ => {}
        }
        if let Err(e) = self.store.static_release(held.claim()).await {
            warn!(account = %name, error = %e, "cannot release the rotation claim; it expires by itself");
        }
        result
    }

    /// Records `record` under the run's claim; a write the store fences
    /// off (the claim was taken over) is [`RotationError::ClaimLost`].
    ///
    /// A write that failed otherwise (the store closed the connection, as it
    /// does to a node that stalled mid-transaction) is sent once more: it is
    /// conditional on the claim, so repeating it is harmless, and the answer
    /// then says whether the claim still holds.
    async fn put(&self, record: &StaticRecord, held: &Held) -> Result<(), RotationError> {
        let mut outcome = self.store.static_write(record.clone(), held.claim()).await;
        if let Err(e) = &outcome {
            if !matches!(e, StoreError::ClaimLost { .. }) {
                warn!(account = %record.name, error = %e, "cannot record the rotation's state; trying once more");
                outcome = self.store.static_write(record.clone(), held.claim()).await;
            }
        }
        match outcome {
            Err(StoreError::ClaimLost { .. }) => Err(held.lost_error()),
            other => Ok(other?),
        }
    }

    async fn run_claimed(
        &self,
        account: &StaticAccount,
        trigger: Trigger,
        held: &Held,
    ) -> Result<(), RotationError> {
        let name = &account.name;
        let plugin = self.plugins[&account.connection].clone();
        let mut record = self.store.static_get(name).await?.unwrap_or_else(|| StaticRecord::new(name));
        if is_root(account) && account.strategy == Strategy::AccessKey && record.current.is_none() {
            // The key lessor was configured with is the one to replace (and
            // delete), though it was never stored.
            record.current =
                plugin.admin_key_id().map(|id| SealedCredential { username: id, sealed: Vec::new() });
        }
        if let Some(pending) = &record.pending {
            let context = seal_context(name, pending.version, &pending.credential.username);
            let sealed = &pending.credential.sealed;
            if !sealed.is_empty() && self.sealer().open(&context, sealed).is_err() {
                // Sealed under another key (the key was moved): it can never
                // be used, so the rotation starts over.
                warn!(account = %name, version = pending.version, "the pending secret does not open with this seal key; starting the rotation over");
                record.pending = None;
            }
        }
        let now = Utc::now();
        let operator = match &trigger {
            Trigger::Operator { reason, overlap } => Some((reason.clone(), *overlap)),
            Trigger::Due => None,
        };
        let start = record.pending.is_none()
            && (operator.is_some()
                || if is_root(account) {
                    false
                } else if record.version == 0 {
                    record.next_rotation_at.is_none_or(|at| at <= now)
                } else {
                    record.next_rotation_at.is_some_and(|at| at <= now)
                });
        // A scheduled slot missed by more than the window waits for the next.
        if let (true, None, Some(window), Some(slot)) =
            (start, &operator, account.window, record.next_rotation_at)
        {
            if record.version > 0 && record.failures == 0 && slot + window.to_chrono() < now {
                record.next_rotation_at = next_slot(account, now);
                info!(account = %name, missed = %slot, next = ?record.next_rotation_at, "scheduled rotation missed its window; waiting for the next slot");
                self.put(&record, held).await?;
                return Ok(());
            }
        }
        let emergency = operator.as_ref().is_some_and(|(_, overlap)| overlap.as_std().is_zero());
        // A previous credential is retired when its overlap ends, or before a
        // new rotation reuses its user.
        if record.previous_username.is_some()
            && (start || record.previous_valid_until.is_none_or(|t| t <= now))
        {
            if emergency {
                record.previous_end_sessions = true;
            }
            self.retire(account, plugin.as_ref(), &mut record, held).await?;
        }
        if start {
            let (reason, overlap) = operator.clone().unwrap_or((None, account.overlap));
            self.create(account, &mut record, reason, overlap, held).await?;
        } else if let (Some(pending), Some((reason, overlap))) = (record.pending.as_mut(), &operator) {
            // An operator's request takes over a rotation left half-way.
            pending.reason = reason.clone().or(pending.reason.take());
            pending.overlap_ms = overlap.as_std().as_millis() as u64;
        }
        if record.pending.is_some() {
            self.advance(account, plugin.as_ref(), &mut record, held).await?;
        }
        Ok(())
    }

    /// `create`: a new secret, sealed and stored before the backend sees it.
    async fn create(
        &self,
        account: &StaticAccount,
        record: &mut StaticRecord,
        reason: Option<String>,
        overlap: Duration,
        held: &Held,
    ) -> Result<(), RotationError> {
        let version = record.version + 1;
        let overlap = if account.strategy == Strategy::Single { Duration::ZERO } else { overlap };
        if account.strategy == Strategy::AccessKey {
            // The backend makes the secret: only the intent is recorded
            // now, the key when it exists.
            record.pending = Some(PendingRotation {
                version,
                credential: SealedCredential { username: String::new(), sealed: Vec::new() },
                phase: RotationPhase::Created,
                reason: reason.clone(),
                overlap_ms: overlap.as_std().as_millis() as u64,
            });
            self.put(record, held).await?;
            info!(account = %account.name, version, user = %account.usernames[0], reason = reason.as_deref().unwrap_or("scheduled"), overlap = %overlap, "rotation started");
            return Ok(());
        }
        let username = match (account.strategy, &record.current) {
            (Strategy::Single | Strategy::DualPassword | Strategy::AccessKey, _)
            | (Strategy::Alternating, None) => account.usernames[0].clone(),
            (Strategy::Alternating, Some(current)) => account
                .usernames
                .iter()
                .find(|u| **u != current.username)
                .unwrap_or(&account.usernames[0])
                .clone(),
        };
        let password = names::password(account.password_length);
        let sealed = self.sealer().seal(&seal_context(&account.name, version, &username), &password);
        record.pending = Some(PendingRotation {
            version,
            credential: SealedCredential { username: username.clone(), sealed },
            phase: RotationPhase::Created,
            reason: reason.clone(),
            overlap_ms: overlap.as_std().as_millis() as u64,
        });
        self.put(record, held).await?;
        info!(account = %account.name, version, username, reason = reason.as_deref().unwrap_or("scheduled"), overlap = %overlap, "rotation started");
        Ok(())
    }

    /// `set`, `test`, `promote`, from whichever phase the record is in.
    async fn advance(
        &self,
        account: &StaticAccount,
        plugin: &dyn Plugin,
        record: &mut StaticRecord,
        held: &Held,
    ) -> Result<(), RotationError> {
        let pending = record.pending.clone().expect("advance is called with a pending rotation");
        let mut phase = pending.phase;
        let access_key = account.strategy == Strategy::AccessKey;
        // The user (or, for access_key, the key id) and its new secret.
        let (username, secret) = if access_key && phase == RotationPhase::Created {
            // `set` for a key is making it: the backend picks the secret.
            let keep: Option<Vec<String>> = record.current.as_ref().map(|current| {
                std::iter::once(current.username.clone()).chain(record.previous_username.clone()).collect()
            });
            held.check()?;
            let (key_id, secret) =
                match self.bounded(plugin.create_key(&account.usernames[0], keep.as_deref())).await {
                    Ok(made) => made,
                    Err(e) => return Err(self.fail(account, record, "making the new key", e, held).await),
                };
            let sealed = self.sealer().seal(&seal_context(&account.name, pending.version, &key_id), &secret);
            if let Some(pending) = record.pending.as_mut() {
                pending.credential = SealedCredential { username: key_id.clone(), sealed };
            }
            phase = self.enter_phase(record, RotationPhase::Set, held).await?;
            (key_id, secret)
        } else {
            let username = pending.credential.username.clone();
            let context = seal_context(&account.name, pending.version, &username);
            (username, self.sealer().open(&context, &pending.credential.sealed)?)
        };
        // An admin password may have been set by an attempt that died
        // before it could record so; then the admin pool's password no
        // longer works, and only a login with the new one tells.
        if phase == RotationPhase::Created && is_root(account) {
            held.check()?;
            if self.bounded(plugin.test_login(&username, &secret)).await.is_ok() {
                phase = self.enter_phase(record, RotationPhase::Set, held).await?;
            }
        }
        if phase == RotationPhase::Created {
            held.check()?;
            let set = match account.strategy {
                // Beside the old one, which keeps working until retired.
                Strategy::DualPassword => self.bounded(plugin.add_password(&username, &secret)).await,
                _ => self.bounded(plugin.set_password(&username, &secret)).await,
            };
            if let Err(e) = set {
                return Err(self.fail(account, record, "setting the new password", e, held).await);
            }
            phase = self.enter_phase(record, RotationPhase::Set, held).await?;
        }
        if phase == RotationPhase::Set {
            held.check()?;
            let tested = match access_key {
                true => self.bounded(plugin.test_key(&username, &secret)).await,
                false => self.bounded(plugin.test_login(&username, &secret)).await,
            };
            if let Err(e) = tested {
                // A run that lost its claim must not "roll back": the
                // password it would set back may be one another node's
                // emergency rotation just ended.
                held.check()?;
                self.roll_back(account, plugin, record).await;
                return Err(self.fail(account, record, "logging in with the new secret", e, held).await);
            }
            phase = self.enter_phase(record, RotationPhase::Tested, held).await?;
        }
        debug_assert_eq!(phase, RotationPhase::Tested);
        self.promote(account, plugin, record, &secret, held).await
    }

    async fn enter_phase(
        &self,
        record: &mut StaticRecord,
        phase: RotationPhase,
        held: &Held,
    ) -> Result<RotationPhase, RotationError> {
        if let Some(pending) = record.pending.as_mut() {
            pending.phase = phase;
        }
        self.put(record, held).await?;
        Ok(phase)
    }

    /// `promote`: pending becomes current; the old current becomes previous,
    /// working for the overlap (retired at once when there is none).
    async fn promote(
        &self,
        account: &StaticAccount,
        plugin: &dyn Plugin,
        record: &mut StaticRecord,
        secret: &SecretString,
        held: &Held,
    ) -> Result<(), RotationError> {
        let pending = record.pending.take().expect("promote is called with a pending rotation");
        let now = Utc::now();
        let overlap = chrono::Duration::milliseconds(pending.overlap_ms as i64);
        let old = record.current.take();
        record.previous_username = match account.strategy {
            // The user's other passwords, the one it had before lessor's
            // first rotation included, are what is retired.
            Strategy::DualPassword => Some(pending.credential.username.clone()),
            _ => old.map(|c| c.username).filter(|u| *u != pending.credential.username),
        };
        record.previous_valid_until = record.previous_username.as_ref().map(|_| now + overlap);
        // lessor's own admin sessions (they log in with the new password
        // from now on) and an operator's are not ended.
        record.previous_end_sessions = overlap.is_zero() && !is_root(account);
        record.current = Some(pending.credential);
        record.version = pending.version;
        record.rotated_at = Some(now);
        record.failures = 0;
        record.last_error = None;
        record.next_rotation_at = next_slot(account, now);
        self.put(record, held).await?;
        crate::metrics::static_rotated(&account.name, now);
        self.audit_background("static.rotate", account, None);
        // An admin credential is nobody's business but the operators'.
        if !is_root(account) {
            self.events.emit(Rotator::rotated_event(record));
        }
        info!(
            account = %account.name,
            version = record.version,
            username = record.current.as_ref().map(|c| c.username.as_str()).unwrap_or(""),
            reason = pending.reason.as_deref().unwrap_or("scheduled"),
            previous_valid_until = ?record.previous_valid_until,
            next_rotation_at = ?record.next_rotation_at,
            "rotated"
        );
        if is_root(account) {
            // New admin connections log in with it from now on (before the
            // old one is retired: that may be done with the new one).
            let current = record.current.as_ref().map(|c| c.username.clone()).unwrap_or_default();
            plugin
                .use_admin_password(&current, secret)
                .map_err(|source| RotationError::Backend { name: account.name.clone(), source })?;
        }
        if overlap.is_zero() && record.previous_username.is_some() {
            // The rotation has happened; a retirement that fails is recorded
            // and retried on its own.
            if let Err(e) = self.retire(account, plugin, record, held).await {
                warn!(account = %account.name, error = %e, "rotated, but the previous credential is not retired yet");
            }
        }
        Ok(())
    }

    /// Retires the previous credential: its user gets a password nobody
    /// knows (and its sessions end when asked). `single` has none to retire.
    async fn retire(
        &self,
        account: &StaticAccount,
        plugin: &dyn Plugin,
        record: &mut StaticRecord,
        held: &Held,
    ) -> Result<(), RotationError> {
        let Some(username) = record.previous_username.clone() else { return Ok(()) };
        if account.strategy != Strategy::Single {
            held.check()?;
            let result = match account.strategy {
                // The previous key id: delete it.
                Strategy::AccessKey => {
                    self.bounded(plugin.delete_key(&account.usernames[0], &username)).await
                }
                // The user gets a password nobody knows (dual_password: the
                // one user keeps the current password alone).
                _ => {
                    let password = match account.strategy {
                        Strategy::DualPassword => self.current_secret(account, record)?,
                        _ => names::password(account.password_length.max(32)),
                    };
                    let mut result = self.bounded(plugin.set_password(&username, &password)).await;
                    if result.is_ok() && record.previous_end_sessions {
                        result = self.bounded(plugin.end_sessions(&username)).await;
                    }
                    result
                }
            };
            if let Err(e) = result {
                // It keeps working until it is retired: say so, and retry.
                let step = format!("retiring {username}");
                return Err(self.fail(account, record, &step, e, held).await);
            }
        }
        record.previous_username = None;
        record.previous_valid_until = None;
        record.previous_end_sessions = false;
        self.put(record, held).await?;
        crate::metrics::static_retired(&account.name);
        self.audit_background("static.retire", account, None);
        info!(account = %account.name, username, "previous credential retired");
        Ok(())
    }

    /// The current secret of `record`, opened.
    fn current_secret(
        &self,
        account: &StaticAccount,
        record: &StaticRecord,
    ) -> Result<SecretString, RotationError> {
        let current = record.current.as_ref().ok_or_else(|| RotationError::NotReady {
            name: account.name.clone(),
            last_error: record.last_error.clone(),
        })?;
        let context = seal_context(&account.name, record.version, &current.username);
        Ok(self.sealer().open(&context, &current.sealed)?)
    }

    /// After a failed login test: the pending secret is dropped. For
    /// `single`, whose one user now has the untested password, the current
    /// one is set back first; if that fails too, the pending secret is kept
    /// (its test is retried later), since the backend may hold it.
    async fn roll_back(&self, account: &StaticAccount, plugin: &dyn Plugin, record: &mut StaticRecord) {
        if account.strategy == Strategy::DualPassword {
            // The untested password is taken away; the old ones never left.
            if let Some(pending) = &record.pending {
                let context = seal_context(&account.name, pending.version, &pending.credential.username);
                let removed = match self.sealer().open(&context, &pending.credential.sealed) {
                    Ok(secret) => {
                        self.bounded(plugin.remove_password(&pending.credential.username, &secret)).await
                    }
                    Err(e) => Err(PluginError::Internal { message: e.to_string() }),
                };
                if let Err(e) = removed {
                    warn!(account = %account.name, error = %e, "cannot take the untested password away; it is kept and tested again later");
                    return;
                }
            }
            record.pending = None;
            return;
        }
        if is_root(account) {
            // The backend has the new admin password now; setting the old
            // one back needs a connection that logs in with one of them.
            // Keep it, and test it again later.
            warn!(account = %account.name, "the rotated admin password failed its login test; testing it again later");
            return;
        }
        if account.strategy == Strategy::AccessKey {
            // The untested key is deleted (best effort: the next rotation
            // deletes any key it does not know of).
            if let Some(key) =
                record.pending.as_ref().map(|p| p.credential.username.clone()).filter(|k| !k.is_empty())
            {
                if let Err(e) = self.bounded(plugin.delete_key(&account.usernames[0], &key)).await {
                    warn!(account = %account.name, access_key_id = key, error = %e, "cannot delete the untested key");
                }
            }
            record.pending = None;
            return;
        }
        let restore = match (account.strategy, &record.current) {
            (Strategy::Single, Some(current)) => Some(current.clone()),
            _ => None,
        };
        if let Some(current) = restore {
            let context = seal_context(&account.name, record.version, &current.username);
            let restored = match self.sealer().open(&context, &current.sealed) {
                Ok(secret) => self.bounded(plugin.set_password(&current.username, &secret)).await.is_ok(),
                Err(_) => false,
            };
            if !restored {
                warn!(account = %account.name, "cannot set the current password back; the untested one is kept and tested again later");
                return;
            }
        }
        record.pending = None;
    }

    /// A background record of a rotation step of `account`; `failed`
    /// holds the (secret-free) error.
    fn audit_background(&self, action: &str, account: &StaticAccount, failed: Option<String>) {
        use crate::audit::{Actor, Record};
        let record = Record::new(action, Actor::daemon()).target(&account.name);
        self.audit.record_background(match failed {
            Some(why) => record.failed("rotation_failed", why),
            None => record,
        });
    }

    /// Records a failed step; the next attempt waits with backoff. When
    /// the note is fenced off (the claim was taken over), that is the
    /// error: the run stops.
    async fn fail(
        &self,
        account: &StaticAccount,
        record: &mut StaticRecord,
        step: &str,
        e: PluginError,
        held: &Held,
    ) -> RotationError {
        let wait = note_failure(record, &format!("{step}: {e}"));
        crate::metrics::static_rotation_failed(&account.name);
        self.audit_background("static.rotate", account, Some(format!("{step}: {e}")));
        match self.put(record, held).await {
            Err(lost @ RotationError::ClaimLost { .. }) => return lost,
            Err(store) => {
                warn!(account = %account.name, error = %store, "cannot record the failed rotation step")
            }
            Ok(()) => {}
        }
        warn!(account = %account.name, step, failures = record.failures, retry_in_s = wait.as_secs(), error = %e, "rotation step failed");
        RotationError::Backend { name: account.name.clone(), source: e }
    }

    /// Records a failure that did not come from the backend (the store, a
    /// secret that does not open) so that it, too, is retried with backoff
    /// rather than at once. Best effort: the store may be what failed.
    async fn note_other_failure(&self, account: &StaticAccount, error: &RotationError, held: &Held) {
        let Ok(Some(mut record)) = self.store.static_get(&account.name).await else { return };
        let wait = note_failure(&mut record, &error.to_string());
        crate::metrics::static_rotation_failed(&account.name);
        self.audit_background("static.rotate", account, Some(error.to_string()));
        let _ = self.put(&record, held).await;
        warn!(account = %account.name, error = %error, retry_in_s = wait.as_secs(), "rotation failed");
    }

    /// A plugin call with a deadline beyond the plugin's own.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, PluginError>>,
    ) -> Result<T, PluginError> {
        let limit = std::time::Duration::from_secs(300);
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(PluginError::Unavailable { message: "no answer within 300s".into() }))
    }
}
