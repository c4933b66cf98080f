//! The writer thread: it owns the file, takes every queued record (up to
//! [`MAX_GROUP`]), writes the group with one `write`, syncs once and then
//! answers every caller. See the module docs of [`super`] for the rules.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::line::{self, Head, Parsed, GENESIS};
use super::{now, Actor, AuditError, Record, MAX_GROUP, MAX_KEPT};

/// The most of the file's end read to find its last line.
const MAX_TAIL: u64 = 64 << 20;

/// A record and when it was handed to the log.
pub(super) struct Entry {
    time: String,
    record: Record,
}

impl Entry {
    pub(super) fn new(record: Record) -> Self {
        Entry { time: now(), record: record.capped() }
    }
}

type Reply = oneshot::Sender<Result<(), AuditError>>;

/// What the writer is asked to do, in order.
// Nearly every message is a record: boxing it to shrink the rare others
// would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    /// A record, with the caller waiting for it (or `None`: background).
    Record(Entry, Option<Reply>),
    /// Reopen the path (SIGHUP).
    Reopen,
    /// Write what is queued and stop.
    Stop,
}

/// What the writer tells the handles.
#[derive(Default)]
pub(super) struct Shared {
    pub write_failure: Mutex<Option<String>>,
    pub reopen_failure: Mutex<Option<String>>,
    pub group_writes: AtomicU64,
    pub records: AtomicU64,
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = value;
}

/// The file and the chain's head.
pub(super) struct Writer {
    path: PathBuf,
    head_path: PathBuf,
    file: File,
    /// (device, inode) of `file`, to tell whether the path still names it.
    id: (u64, u64),
    /// The file's length after the last group that was synced.
    good_len: u64,
    /// A failed group may have left bytes past `good_len` that could not be
    /// cut yet; no write may happen before they are.
    needs_truncate: bool,
    seq: u64,
    hash: String,
    /// Written first by the next group: the writer's own records and the
    /// background records of groups that failed.
    kept: Vec<Entry>,
    /// The head file could not be written (warned once until it can).
    head_failing: bool,
    shared: Arc<Shared>,
}

/// A file opened for appending and what its end holds.
struct Opened {
    file: File,
    id: (u64, u64),
    /// Length up to the end of the last complete line.
    good_len: u64,
    last: Option<Parsed>,
    /// Bytes after the last newline: (how many, their SHA-256).
    torn: Option<(u64, String)>,
}

impl Writer {
    /// Opens `path`, decides where the chain continues and writes the
    /// `audit.opened` record (synced) before anything else can be.
    pub(super) fn open(path: &Path, shared: Arc<Shared>) -> Result<Self, AuditError> {
        let chain = |message: String| AuditError::Chain { path: path.to_owned(), message };
        let opened = open_file(path)?;
        let head_path = line::head_path(path);
        let head = line::read_head(&head_path);
        let (seq, hash, mut how) = match (&opened.last, head) {
            (Some(last), Ok(Some(head)))
                if head.seq > last.seq || (head.seq == last.seq && head.hash != last.hash) =>
            {
                return Err(chain(format!(
                    "the file ends at seq {} but {} says seq {} (hash {}) was written: records were removed \
                     or replaced at the end. Run `lessor audit verify`, then move the file aside to keep it \
                     (a new file continues from the head file)",
                    last.seq,
                    head_path.display(),
                    head.seq,
                    head.hash
                )))
            }
            (Some(last), head) => {
                if let Err(e) = head {
                    tracing::warn!(error = %e, "audit log: ignoring the head file, the log continues from its last line");
                }
                (last.seq, last.hash.clone(), format!("continues seq {} of this file", last.seq))
            }
            (None, Ok(Some(head))) => {
                let how = format!("the file is new: continues seq {} from {}", head.seq, head_path.display());
                (head.seq, head.hash, how)
            }
            (None, Ok(None)) => (0, GENESIS.to_string(), "a new chain".to_string()),
            (None, Err(e)) => {
                return Err(chain(format!(
                    "{e}; the log is empty, so only the head file can continue its chain: repair the head \
                     file, or delete it to start a new chain"
                )))
            }
        };
        let mut writer = Writer {
            path: path.to_owned(),
            head_path,
            id: opened.id,
            good_len: opened.good_len,
            needs_truncate: false,
            file: opened.file,
            seq,
            hash,
            kept: Vec::new(),
            head_failing: false,
            shared,
        };
        let mut record = Record::new("audit.opened", Actor::daemon()).target(path.display().to_string());
        if let Some((bytes, sha)) = &opened.torn {
            writer.cut_back().map_err(|message| AuditError::Write {
                path: path.to_owned(),
                records: 0,
                message,
            })?;
            how.push_str(&torn_note(*bytes, sha, seq));
            record.error_code = Some("torn_tail".into());
            tracing::warn!(log = %path.display(), bytes, "audit log: cut off a torn last line");
        }
        writer.kept.push(Entry::new(record.reason(how)));
        writer.commit(&[])?;
        Ok(writer)
    }

    /// Serves the queue until [`Msg::Stop`] or every sender is gone.
    pub(super) fn run(mut self, mut queue: mpsc::UnboundedReceiver<Msg>) {
        let mut group: Vec<(Entry, Option<Reply>)> = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(entry, reply) => group.push((entry, reply)),
                    Msg::Reopen => {
                        self.flush(&mut group);
                        self.reopen();
                    }
                    Msg::Stop => {
                        self.flush(&mut group);
                        return;
                    }
                }
                if group.len() < MAX_GROUP {
                    next = queue.try_recv().ok();
                }
            }
            self.flush(&mut group);
        }
        self.flush(&mut group);
    }

    /// Writes `group` (after the kept records) and answers its callers.
    fn flush(&mut self, group: &mut Vec<(Entry, Option<Reply>)>) {
        if group.is_empty() && self.kept.is_empty() {
            return;
        }
        let mut entries = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for (entry, reply) in group.drain(..) {
            entries.push(entry);
            replies.push(reply);
        }
        let outcome = self.commit(&entries);
        if let Err(e) = &outcome {
            // Callers hear of it; background records are kept for the next try.
            let mut lost = 0;
            for (entry, reply) in entries.into_iter().zip(&replies) {
                if reply.is_none() {
                    if self.kept.len() < MAX_KEPT {
                        self.kept.push(entry);
                    } else {
                        lost += 1;
                    }
                }
            }
            tracing::error!(error = %e, kept = self.kept.len(), lost, "audit log write failed: requests fail until it works");
        }
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(outcome.clone());
        }
    }

    /// Writes the kept records and `entries` as one group, synced. On
    /// failure nothing of it stays in the file and the head does not move.
    fn commit(&mut self, entries: &[Entry]) -> Result<(), AuditError> {
        let records = self.kept.len() + entries.len();
        match self.write_group(entries) {
            Ok(()) => {
                set(&self.shared.write_failure, None);
                Ok(())
            }
            Err(message) => {
                let e = AuditError::Write { path: self.path.clone(), records, message };
                set(&self.shared.write_failure, Some(e.to_string()));
                ::metrics::counter!("lessor_audit_write_failures_total").increment(1);
                Err(e)
            }
        }
    }

    fn write_group(&mut self, entries: &[Entry]) -> Result<(), String> {
        if self.needs_truncate {
            self.cut_back()?;
        }
        let (mut seq, mut prev) = (self.seq, self.hash.clone());
        let mut bytes = Vec::new();
        for entry in self.kept.iter().chain(entries) {
            seq += 1;
            let line = line::encode(seq, &entry.time, &prev, &entry.record);
            bytes.extend_from_slice(&line.bytes);
            prev = line.hash;
        }
        let started = Instant::now();
        let written = self.file.write_all(&bytes).map_err(|e| format!("write: {e}"));
        let synced = written.and_then(|()| self.file.sync_data().map_err(|e| format!("fsync: {e}")));
        if let Err(message) = synced {
            // Whatever reached the file (all of it, if only the sync failed)
            // was never confirmed: take it back out before anything else.
            self.needs_truncate = true;
            return Err(match self.cut_back() {
                Ok(()) => message,
                Err(cut) => format!("{message}; {cut}"),
            });
        }
        ::metrics::histogram!("lessor_audit_write_seconds").record(started.elapsed().as_secs_f64());
        let records = seq - self.seq;
        self.shared.group_writes.fetch_add(1, Ordering::Relaxed);
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.good_len += bytes.len() as u64;
        self.seq = seq;
        self.hash = prev;
        self.kept.clear();
        self.write_head();
        Ok(())
    }

    /// Cuts the file back to `good_len` (when it is longer: a failed write
    /// may have written nothing, and a device cannot be cut).
    fn cut_back(&mut self) -> Result<(), String> {
        if self.file.metadata().is_ok_and(|m| m.len() == self.good_len) {
            self.needs_truncate = false;
            return Ok(());
        }
        self.file.set_len(self.good_len).map_err(|e| {
            format!("cannot cut the file back to its last good length ({} bytes): {e}", self.good_len)
        })?;
        self.needs_truncate = false;
        Ok(())
    }

    fn write_head(&mut self) {
        let head = Head { seq: self.seq, hash: self.hash.clone() };
        match line::write_head(&self.head_path, &head) {
            Ok(()) => self.head_failing = false,
            Err(e) if !self.head_failing => {
                self.head_failing = true;
                tracing::warn!(head = %self.head_path.display(), error = %e, "audit log: cannot write the head file");
            }
            Err(_) => {}
        }
    }

    /// Opens the path anew (SIGHUP) and writes `audit.reopened` into it. A
    /// path that cannot be opened, or holds another chain, is refused and
    /// the file opened before is kept.
    fn reopen(&mut self) {
        match self.switch() {
            Ok(how) => {
                set(&self.shared.reopen_failure, None);
                let record =
                    Record::new("audit.reopened", Actor::daemon()).target(self.path.display().to_string());
                self.kept.push(Entry::new(record.reason(how)));
                self.flush(&mut Vec::new());
            }
            Err(e) => {
                tracing::error!(error = %e, "audit log: cannot reopen; still writing to the file opened before");
                set(
                    &self.shared.reopen_failure,
                    Some(format!("cannot reopen: {e}; still writing to the file opened before")),
                );
            }
        }
    }

    fn switch(&mut self) -> Result<String, AuditError> {
        let same = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if same {
            return Ok(format!("reopened the same file: continues seq {}", self.seq));
        }
        let opened = open_file(&self.path)?;
        let mut how = match &opened.last {
            None => format!("a new file: continues seq {} from the file before", self.seq),
            Some(last) if last.seq == self.seq && last.hash == self.hash => {
                format!("continues seq {}", self.seq)
            }
            Some(last) => {
                return Err(AuditError::Chain {
                    path: self.path.clone(),
                    message: format!(
                        "the file ends at seq {} (hash {}), not at this log's head, seq {} (hash {}): \
                         another chain; move it away and send SIGHUP again",
                        last.seq, last.hash, self.seq, self.hash
                    ),
                })
            }
        };
        self.file = opened.file;
        self.id = opened.id;
        self.good_len = opened.good_len;
        self.needs_truncate = opened.torn.is_some();
        if let Some((bytes, sha)) = &opened.torn {
            how.push_str(&torn_note(*bytes, sha, self.seq));
        }
        Ok(how)
    }
}

fn torn_note(bytes: u64, sha: &str, seq: u64) -> String {
    format!("; cut off a torn last line ({bytes} bytes after seq {seq}, SHA-256 {sha}), a write never acknowledged")
}

/// Opens (creating, mode 0600) `path` for appending, takes its lock, and
/// reads its end: the last complete line must check out.
fn open_file(path: &Path) -> Result<Opened, AuditError> {
    let open_error = |message: String| AuditError::Open { path: path.to_owned(), message };
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| open_error(e.to_string()))?;
    let meta = file.metadata().map_err(|e| open_error(e.to_string()))?;
    if meta.is_file() {
        // Two daemons appending to one file would interleave two chains.
        // SAFETY: flock on a valid descriptor has no other precondition.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0
        {
            let e = std::io::Error::last_os_error();
            return Err(open_error(format!("cannot lock it (is another lessor writing it?): {e}")));
        }
    }
    let (good_len, last, torn) = read_tail(&file, meta.len(), path)?;
    Ok(Opened { file, id: (meta.dev(), meta.ino()), good_len, last, torn })
}

/// The end of the file: (length up to the last newline, its last complete
/// line, the torn bytes after it).
type Tail = (u64, Option<Parsed>, Option<(u64, String)>);

fn read_tail(file: &File, len: u64, path: &Path) -> Result<Tail, AuditError> {
    let chain = |message: String| AuditError::Chain { path: path.to_owned(), message };
    let read_error =
        |e: std::io::Error| AuditError::Open { path: path.to_owned(), message: format!("read: {e}") };
    let mut want = 64 * 1024;
    loop {
        let start = len.saturating_sub(want);
        let mut buf = vec![0; (len - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(read_error)?;
        // The last newline ends the last complete line; what follows is torn.
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start > 0 && want < MAX_TAIL {
                want *= 2;
                continue;
            }
            if start > 0 {
                return Err(chain(format!("no newline in the last {MAX_TAIL} bytes")));
            }
            return Ok((0, None, torn(&buf)));
        };
        let begin = match buf[..end].iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if start == 0 => 0,
            None if want < MAX_TAIL => {
                want *= 2;
                continue;
            }
            None => return Err(chain(format!("a last line longer than {MAX_TAIL} bytes"))),
        };
        let last = line::parse(&buf[begin..end]).map_err(|why| {
            chain(format!(
                "its last record (ending at byte {}) does not check out: {why}. This is not a torn write; \
                 run `lessor audit verify`, then move the file aside to keep it",
                start + end as u64 + 1
            ))
        })?;
        return Ok((start + end as u64 + 1, Some(last), torn(&buf[end + 1..])));
    }
}

fn torn(bytes: &[u8]) -> Option<(u64, String)> {
    (!bytes.is_empty()).then(|| (bytes.len() as u64, hex::encode(Sha256::digest(bytes))))
}
