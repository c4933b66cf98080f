//! The tamper-evident audit log: one JSON line per API request and per
//! background action (expiry revocation, rollback, rotation, tidy), at
//! `server.audit_log`, each line carrying the hash of the one before.
//!
//! # A line
//!
//! ```text
//! {"seq":7,"time":"2030-01-01T12:00:00.123Z","prev":"<64 hex>","action":"creds.issue",
//!  "actor":{"uid":1000,"user":"app","pid":4242,"exe":"/usr/bin/app","policy":"web"},
//!  "target":"app_ro","outcome":"ok","status":200,"lease_id":"app_ro/3kTq…","hash":"<64 hex>"}
//! ```
//! (one line in the file). `seq` grows by one per record; `time` is when the
//! record was handed to the log (UTC, milliseconds); fields that are `None`
//! are left out. `hash` is always the last field, and (see [`line`]):
//!
//! ```text
//! hash = hex(SHA-256(B))   B = the line without its newline, with its last 75 bytes
//!                              (,"hash":"<64 hex>"}) replaced by }
//! ```
//! so `B` holds `prev`, the `hash` of the record before (64 zeros for the
//! first record of a chain): editing, removing or reordering any line breaks
//! a hash or a link. The bytes are hashed as they are in the file, so a
//! third party can check a log with a ten-line script.
//!
//! # Durability and grouping
//!
//! One writer thread owns the file, as the lease store's writer owns its
//! connection: it takes every record queued (up to [`MAX_GROUP`]), writes
//! them with one `write`, syncs once (`sync_data`) and only then answers
//! every [`Audit::record`] caller, so a burst of requests costs one fsync,
//! not one each. A write or sync that fails fails every caller of the group
//! (fail closed) and [`Audit::failure`] says why until a later write
//! succeeds; the file is cut back to its last good length, so the chain
//! never holds records nobody was told about, and the head does not move.
//! Background records of a failed group are kept (up to [`MAX_KEPT`]) and
//! written first by the next group that succeeds.
//!
//! # The chain head, restarts and torn tails
//!
//! On open the writer continues from the file's last line, after checking
//! that line's hash (the whole file is `lessor audit verify`'s job). Bytes
//! after the last newline are a torn write from a crash: that group was
//! never synced, so nobody heard of it; they are cut off and the
//! `audit.opened` record that every open writes says how many bytes went
//! and their SHA-256. A last *complete* line that does not check out is not
//! a crash's doing: open refuses, and the operator looks.
//!
//! After every group the head (`seq` and `hash` of the last record) is also
//! written to `<audit_log>.head` (temporary file + rename). It is not
//! synced: the log is the record, the head a hint that is never ahead of
//! what the log has synced (it is written after the sync), and may be behind
//! after a crash. It serves two cases: an empty log (just rotated) continues
//! the chain from it, so a restart between a rotation and the next write
//! still links the files; and both open and `verify` compare the log's end
//! with it, so records cut from the end of the log are noticed.
//!
//! # Rotation
//!
//! Move the file away, then send SIGHUP ([`Audit::spawn_reopen_on_sighup`]):
//! the writer opens the path anew (creating it, mode 0600) and writes an
//! `audit.reopened` record whose `prev` is the old file's last hash, so the
//! files chain one into the next. Until the SIGHUP, records go on to the
//! moved file. A path that is not empty and does not end with this log's
//! head is refused (the old file is kept), never appended to. Copying and
//! truncating in place (logrotate's `copytruncate`) loses records: not
//! supported.
//!
//! # Never a secret
//!
//! A [`Record`] holds only identity, action, target, outcome and an error
//! code and reason. Callers must never put a credential, password, token or
//! statement text in `reason` or `target`: a backend's error goes in as the
//! redacted message the API answers with, never as the driver's raw text.
//! Long text fields are cut at [`MAX_FIELD`] bytes.

mod line;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use line::{head_path, Head, GENESIS, HASH_SUFFIX_LEN};
pub use verify::{verify, Broken, Verified};
use writer::{Entry, Msg, Shared};

/// Most records written (and synced) together.
pub const MAX_GROUP: usize = 1024;
/// Most background records kept for a retry while the log cannot be written.
pub const MAX_KEPT: usize = 10_000;
/// Longest `target`, `reason` or `error_code`, in bytes; longer ones are cut.
pub const MAX_FIELD: usize = 2048;

/// A handle on the audit log; cheap to clone. Dropping the last clone lets
/// the writer finish what is queued, then closes the file.
#[derive(Clone, Debug)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    path: PathBuf,
    queue: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Blocks until the writer has written what was queued: a record that
        // was accepted is not lost to a shutdown.
        let _ = self.queue.send(Msg::Stop);
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}

impl Audit {
    /// No audit log configured: every record is accepted and dropped.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Opens (creating, mode 0600, never its directory) the log at `path`
    /// for appending, continues its chain (from its last line, or from the
    /// head file when it is empty), writes an `audit.opened` record, and
    /// starts the writer thread. Blocks: call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let shared = Arc::new(Shared::default());
        let writer = writer::Writer::open(path, Arc::clone(&shared))?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("lessor-audit".into())
            .spawn(move || writer.run(jobs))
            .map_err(|e| AuditError::Open {
                path: path.to_owned(),
                message: format!("cannot start the writer: {e}"),
            })?;
        let inner = Inner { path: path.to_owned(), queue, shared, thread: Mutex::new(Some(thread)) };
        Ok(Self { inner: Some(Arc::new(inner)) })
    }

    /// Writes `record` and returns once it is synced to disk, together with
    /// whatever else was queued meanwhile. An `Err` means it was not written:
    /// the caller must fail its request. A record handed over is written even
    /// if the caller stops waiting (a cancelled request).
    pub async fn record(&self, record: Record) -> Result<(), AuditError> {
        let Some(inner) = &self.inner else { return Ok(()) };
        let (reply, answer) = oneshot::channel();
        let stopped = || AuditError::Stopped { path: inner.path.clone() };
        inner.queue.send(Msg::Record(Entry::new(record), Some(reply))).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues `record` without waiting, for background actions nobody waits
    /// on. A failed write is logged (the action, never more), marks the log
    /// unhealthy, and the record is written by the next group that succeeds.
    pub fn record_background(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        let action = record.action.clone();
        if inner.queue.send(Msg::Record(Entry::new(record), None)).is_err() {
            tracing::error!(log = %inner.path.display(), %action, "audit log writer stopped: record lost");
        }
    }

    /// Closes and reopens the path (after the file was moved away, for
    /// rotation); the new file continues the chain with an `audit.reopened`
    /// record. Runs in order with the records queued before and after it.
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            let _ = inner.queue.send(Msg::Reopen);
        }
    }

    /// `None` when healthy; else why the last write failed (cleared by a
    /// later write that succeeds) or why the last reopen failed (cleared by
    /// a later reopen that succeeds), for `health`.
    pub fn failure(&self) -> Option<String> {
        let inner = self.inner.as_ref()?;
        if inner.queue.is_closed() {
            return Some(format!("audit log {}: the writer has stopped", inner.path.display()));
        }
        let lock = |slot: &Mutex<Option<String>>| slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        lock(&inner.shared.write_failure).or_else(|| lock(&inner.shared.reopen_failure))
    }

    /// Reopens the log on every SIGHUP until `shutdown` is cancelled. Also
    /// installed when the log is disabled, so that a SIGHUP (whose default
    /// action ends a process) does no harm. Must run inside a Tokio runtime.
    pub fn spawn_reopen_on_sighup(&self, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let audit = self.clone();
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP: the audit log cannot be reopened");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    got = hangups.recv() => {
                        if got.is_none() {
                            break;
                        }
                        match audit.path() {
                            Some(path) => tracing::info!(log = %path.display(), "SIGHUP: reopening the audit log"),
                            None => tracing::info!("SIGHUP: no audit log to reopen"),
                        }
                        audit.reopen();
                    }
                }
            }
        });
    }

    /// The log's path; `None` when disabled.
    pub fn path(&self) -> Option<&Path> {
        self.inner.as_ref().map(|inner| inner.path.as_path())
    }

    /// Groups written and synced so far (each one `sync_data`).
    pub fn group_writes(&self) -> u64 {
        self.inner.as_ref().map_or(0, |inner| inner.shared.group_writes.load(Ordering::Relaxed))
    }

    /// Records written and synced so far.
    pub fn records_written(&self) -> u64 {
        self.inner.as_ref().map_or(0, |inner| inner.shared.records.load(Ordering::Relaxed))
    }
}

/// Why the audit log could not take a record, or could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file (or the writer thread) could not be opened or created.
    #[error("audit log {}: cannot open: {message}", path.display())]
    Open { path: PathBuf, message: String },
    /// The file's content cannot be continued (a last line that does not
    /// check out, a head file that says more was written, another chain).
    #[error("audit log {}: {message}", path.display())]
    Chain { path: PathBuf, message: String },
    /// A write or sync failed; none of the group's records count as written.
    #[error("audit log {}: cannot write {records} record(s): {message}", path.display())]
    Write { path: PathBuf, records: usize, message: String },
    /// The writer thread has stopped (shutdown, or it panicked).
    #[error("audit log {}: the writer has stopped", path.display())]
    Stopped { path: PathBuf },
}

impl AuditError {
    /// The API error code for a request refused because it could not be
    /// audited (answered 503).
    pub fn code(&self) -> &'static str {
        "audit_unavailable"
    }
}

/// Who acted. For API requests, what the kernel and `/proc` say of the
/// caller (see [`crate::policy::Identity`]) plus the policy that matched;
/// for background actions, [`Actor::daemon`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The policy that granted (or, when none did, `None`) the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's name, as its engine says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The image the container was made from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `namespace/pod`, for a Kubernetes pod's container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Actor {
    /// lessor itself, for background actions: its uid, gid, user, pid and
    /// executable (read once).
    pub fn daemon() -> Self {
        static DAEMON: OnceLock<Actor> = OnceLock::new();
        DAEMON
            .get_or_init(|| {
                // SAFETY: getuid, getgid and getpid have no preconditions.
                let (uid, gid, pid) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
                let me = crate::policy::Identity::read(
                    uid,
                    gid,
                    Some(pid),
                    crate::policy::identity::boot_seconds(),
                );
                Actor { policy: None, ..Actor::from(&me) }
            })
            .clone()
    }

    /// The same actor, granted by `policy`.
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self
    }
}

impl From<&crate::policy::Identity> for Actor {
    fn from(id: &crate::policy::Identity) -> Self {
        Actor {
            uid: Some(id.uid),
            gid: Some(id.gid),
            user: id.user.clone(),
            pid: id.pid,
            exe: id.exe.clone(),
            policy: None,
            systemd_unit: id.systemd_unit.clone(),
            container_id: id.container_id.clone(),
            container_name: id.container.as_ref().map(|c| c.name.clone()),
            image: id.container.as_ref().map(|c| c.image.clone()),
            pod: id.container.as_ref().and_then(|c| c.pod()),
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused: not allowed, or bad input.
    Denied,
    /// Attempted and failed (a backend, the store, a timeout).
    Failed,
    /// Not done yet: an intent record, written before an irreversible
    /// action; its outcome record (same `intent_id`) says how it ended.
    Pending,
}

/// Which half of an irreversible admin action (revoke by prefix, force,
/// rotations, tidy, revoke-sessions) a record is. Such an action is
/// announced by an intent record, synced before anything is done (if it
/// cannot be written, nothing is), and closed by an outcome record with the
/// same `intent_id`; a crash in between leaves the intent alone, which is
/// how an auditor tells an action that may have half happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Announced, before acting.
    Intent,
    /// How the announced action ended.
    Outcome,
}

/// One audited action. Build with [`Record::new`] and the setters. Never a
/// secret: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// What was done, dotted: `creds.issue`, `lease.revoke`, `expiry.revoke`,
    /// `static.rotate`, `tidy.drop`, `audit.opened`, …
    pub action: String,
    /// Set on the two records of an irreversible admin action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Pairs an intent record with its outcome record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    pub actor: Actor,
    /// What it was done to: a role, a lease prefix, an account, a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub outcome: Outcome,
    /// The HTTP status answered, for API requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The API error code (`not_allowed`, `backend_failed`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Why, in words; never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
}

impl Record {
    /// A successful `action` by `actor`.
    pub fn new(action: impl Into<String>, actor: Actor) -> Self {
        Record {
            action: action.into(),
            phase: None,
            intent_id: None,
            actor,
            target: None,
            outcome: Outcome::Ok,
            status: None,
            error_code: None,
            reason: None,
            lease_id: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn lease(mut self, lease_id: impl Into<String>) -> Self {
        self.lease_id = Some(lease_id.into());
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The intent record `id` of an irreversible action, written before it
    /// starts: outcome `pending`.
    pub fn intent(mut self, id: impl Into<String>) -> Self {
        self.phase = Some(Phase::Intent);
        self.intent_id = Some(id.into());
        self.outcome = Outcome::Pending;
        self
    }

    /// The outcome record of the action announced by intent `id`.
    pub fn outcome_of(mut self, id: impl Into<String>) -> Self {
        self.phase = Some(Phase::Outcome);
        self.intent_id = Some(id.into());
        self
    }

    /// Why (never a secret).
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Refused, with the API error code and why.
    pub fn denied(self, code: impl Into<String>, reason: impl Into<String>) -> Self {
        self.ended(Outcome::Denied, code, reason)
    }

    /// Failed, with the API error code and why.
    pub fn failed(self, code: impl Into<String>, reason: impl Into<String>) -> Self {
        self.ended(Outcome::Failed, code, reason)
    }

    fn ended(mut self, outcome: Outcome, code: impl Into<String>, reason: impl Into<String>) -> Self {
        self.outcome = outcome;
        self.error_code = Some(code.into());
        self.reason = Some(reason.into());
        self
    }

    /// Cuts the free-text fields to [`MAX_FIELD`] bytes.
    fn capped(mut self) -> Self {
        for field in [&mut self.target, &mut self.reason, &mut self.error_code].into_iter().flatten() {
            cap(field);
        }
        self
    }
}

/// Cuts `text` to at most [`MAX_FIELD`] bytes, on a character boundary,
/// marking the cut with `…`.
fn cap(text: &mut String) {
    if text.len() <= MAX_FIELD {
        return;
    }
    let mut end = MAX_FIELD - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// Now, as a record's `time`.
fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
