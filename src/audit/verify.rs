//! `lessor audit verify`: reads a log from its first line and reports the
//! first one where the chain breaks.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::line::{self, Parsed, GENESIS};

/// A log whose every line checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// How many records (lines) the file holds.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The hash of the last record: the chain's head. `None` when empty.
    pub head: Option<String>,
    /// The first record's `prev` when it is not 64 zeros: the file goes on
    /// from an earlier one (rotation), whose last hash this must be.
    pub continues_from: Option<String>,
    /// What is worth saying without being a break (a head file behind the
    /// log, or unreadable).
    pub notes: Vec<String>,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: chain broken at seq {}: {what}", seq.map_or_else(|| "?".to_string(), |s| s.to_string()))]
pub struct Broken {
    /// The 1-based line that breaks the chain (one past the last line for
    /// records missing at the end; 0 when the file cannot be read at all).
    pub line: u64,
    /// The seq that line should have had, when known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// Checks every line of the log at `path`: each must be a whole JSON line
/// whose hash matches its bytes, whose `seq` is one more than the line
/// before and whose `prev` is that line's hash. The first line may continue
/// an earlier file (a `prev` that is not zeros, with a `seq` over 1). When
/// `<path>.head` exists, the record it names must be in the file with that
/// hash, and it may not name a seq past the end (records cut off).
pub fn verify(path: &Path) -> Result<Verified, Broken> {
    let whole = |what: String| Broken { line: 0, seq: None, what };
    // The head file first: it is written after the log is synced, so the
    // log read afterwards holds at least what it names, even while the
    // daemon writes.
    let head_path = line::head_path(path);
    let head = line::read_head(&head_path);
    let file = File::open(path).map_err(|e| whole(format!("cannot open: {e}")))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);

    let mut found = Verified {
        records: 0,
        first_seq: None,
        last_seq: None,
        head: None,
        continues_from: None,
        notes: Vec::new(),
    };
    let mut last: Option<Parsed> = None;
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(|e| whole(format!("cannot read: {e}")))?;
        if read == 0 {
            break;
        }
        number += 1;
        let expected = last.as_ref().map(|l| l.seq + 1);
        let broken = |what: String| Broken { line: number, seq: expected, what };
        if buf.pop() != Some(b'\n') {
            return Err(broken(
                "an incomplete last line (no newline): a torn write, or a cut; lessor cuts a torn line \
                 off when it next opens the file"
                    .into(),
            ));
        }
        let record = line::parse(&buf).map_err(broken)?;
        match &last {
            None if record.seq == 1 && record.prev != GENESIS => {
                return Err(Broken {
                    line: number,
                    seq: Some(1),
                    what: "the first record of a chain (seq 1) has a prev that is not 64 zeros".into(),
                })
            }
            None if record.seq > 1 && record.prev == GENESIS => {
                return Err(Broken {
                    line: number,
                    seq: Some(record.seq),
                    what: format!("seq {} has no previous hash (prev is 64 zeros)", record.seq),
                })
            }
            None => {
                found.first_seq = Some(record.seq);
                found.continues_from = (record.seq > 1).then(|| record.prev.clone());
            }
            Some(before) if record.seq <= before.seq => {
                return Err(broken(format!(
                    "seq goes back from {} to {}: records reordered or repeated",
                    before.seq, record.seq
                )))
            }
            Some(before) if record.seq > before.seq + 1 => {
                return Err(broken(format!(
                    "seq jumps from {} to {}: {} record(s) missing",
                    before.seq,
                    record.seq,
                    record.seq - before.seq - 1
                )))
            }
            Some(before) if record.prev != before.hash => {
                return Err(broken(format!(
                    "prev does not match the hash of the record before (seq {}): a record was replaced",
                    before.seq
                )))
            }
            Some(_) => {}
        }
        if let Ok(Some(head)) = &head {
            if head.seq == record.seq && head.hash != record.hash {
                return Err(broken(format!(
                    "{} says seq {} has hash {}, but this record's is {}: the record was replaced",
                    head_path.display(),
                    head.seq,
                    head.hash,
                    record.hash
                )));
            }
        }
        found.records += 1;
        last = Some(record);
    }

    if let Some(last) = &last {
        found.last_seq = Some(last.seq);
        found.head = Some(last.hash.clone());
    }
    match (head, &last) {
        (Err(e), _) => found.notes.push(format!("{e}; not used")),
        (Ok(None), _) => {}
        (Ok(Some(head)), None) => found.notes.push(format!(
            "the file is empty and {} names seq {} (hash {}): it was just rotated, or emptied",
            head_path.display(),
            head.seq,
            head.hash
        )),
        (Ok(Some(head)), Some(last)) if head.seq > last.seq => {
            return Err(Broken {
                line: number + 1,
                seq: Some(last.seq + 1),
                what: format!(
                    "the file ends at seq {}, but {} says seq {} (hash {}) was written: records were cut \
                     from the end",
                    last.seq,
                    head_path.display(),
                    head.seq,
                    head.hash
                ),
            })
        }
        (Ok(Some(head)), Some(_)) if found.first_seq.is_some_and(|first| head.seq < first) => {
            found.notes.push(format!(
                "{} names seq {}, before this file's first record: it was not updated since a rotation",
                head_path.display(),
                head.seq
            ))
        }
        (Ok(Some(head)), Some(last)) if head.seq < last.seq => found.notes.push(format!(
            "{} is behind (seq {} of {}): it is not synced, so a crash can leave it behind",
            head_path.display(),
            head.seq,
            last.seq
        )),
        (Ok(Some(_)), Some(_)) => {
            found.notes.push(format!("the last record matches {}", head_path.display()))
        }
    }
    Ok(found)
}
