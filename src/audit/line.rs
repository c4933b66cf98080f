//! The bytes of one audit line, its hash, and the head file.
//!
//! A line is the JSON object `B` of every field but `hash` (as written,
//! byte for byte: no canonical form is needed because nobody re-serializes),
//! with its closing `}` replaced by `,"hash":"H"}` and a newline added:
//!
//! ```text
//! line = B[..len-1] ‖ ,"hash":" ‖ H ‖ "}
//! H    = lowercase hex of SHA-256(B)
//! ```
//!
//! So a verifier drops the last [`HASH_SUFFIX_LEN`] bytes of a line, appends
//! `}`, hashes, and compares with the `hash` field. `prev` is the `hash` of
//! the record before (64 zeros before the first one), and it is inside `B`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Record;

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of `,"hash":"<64 hex>"}`, the fixed end of every line (without
/// its newline).
pub const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;
const HASH_KEY: &[u8] = b",\"hash\":\"";

/// The fields of a line before the record's own, in the order written.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: &'a str,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a Record,
}

/// One encoded line: its bytes (newline included) and its hash.
pub(super) struct Encoded {
    pub bytes: Vec<u8>,
    pub hash: String,
}

/// The line for `record` at `seq`, chained to `prev`.
pub(super) fn encode(seq: u64, time: &str, prev: &str, record: &Record) -> Encoded {
    let mut bytes = serde_json::to_vec(&Line { seq, time, prev, record }).expect("a record serializes");
    let hash = hex::encode(Sha256::digest(&bytes));
    debug_assert_eq!(bytes.last(), Some(&b'}'));
    bytes.pop();
    bytes.extend_from_slice(HASH_KEY);
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}\n");
    Encoded { bytes, hash }
}

/// What the chain needs of a line that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
}

/// Checks one line (without its newline) on its own: JSON, the hash over
/// its bytes, `seq`, `prev` and `time` present and well-formed. Says what is
/// wrong otherwise. Whether it follows the line before is the caller's
/// question.
pub(super) fn parse(line: &[u8]) -> Result<Parsed, String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not a JSON record: {e}"))?;
    let Value::Object(object) = value else { return Err("not a JSON object".into()) };
    let hash = match object.get("hash") {
        Some(Value::String(hash)) if is_hash(hash) => hash.clone(),
        _ => return Err("no \"hash\" field of 64 lowercase hex digits".into()),
    };
    if line.len() <= HASH_SUFFIX_LEN || !line[line.len() - HASH_SUFFIX_LEN..].starts_with(HASH_KEY) {
        return Err("\"hash\" is not the last field".into());
    }
    let (body, tail) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    if &tail[HASH_KEY.len()..HASH_KEY.len() + 64] != hash.as_bytes() || !tail.ends_with(b"\"}") {
        return Err("\"hash\" is not the last field".into());
    }
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    let actual = hex::encode(hasher.finalize());
    if actual != hash {
        return Err(format!(
            "hash mismatch: the record was altered (it hashes to {actual}, its hash field says {hash})"
        ));
    }
    let seq = match object.get("seq").and_then(Value::as_u64) {
        Some(seq) if seq > 0 => seq,
        _ => return Err("no \"seq\" field (a positive integer)".into()),
    };
    let prev = match object.get("prev") {
        Some(Value::String(prev)) if is_hash(prev) => prev.clone(),
        _ => return Err("no \"prev\" field of 64 lowercase hex digits".into()),
    };
    match object.get("time").and_then(Value::as_str) {
        Some(time) if chrono::DateTime::parse_from_rfc3339(time).is_ok() => {}
        _ => return Err("no \"time\" field (an RFC 3339 time)".into()),
    }
    Ok(Parsed { seq, prev, hash })
}

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The last record written, as kept in the head file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// `<log>.head`, beside the log.
pub fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// The head file's record, `None` when there is no head file; an error
/// says what is wrong with one that exists.
pub(super) fn read_head(path: &Path) -> Result<Option<Head>, String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let head: Head = serde_json::from_str(text.trim_end())
        .map_err(|e| format!("{} is not a head record: {e}", path.display()))?;
    if head.seq == 0 || !is_hash(&head.hash) {
        return Err(format!("{} is not a head record: bad seq or hash", path.display()));
    }
    Ok(Some(head))
}

/// Replaces the head file (temporary file, then rename; mode 0600). Not
/// synced: the log is the record and the head only a hint (see the module
/// docs of [`super`]), so it costs no second fsync per group.
pub(super) fn write_head(path: &Path, head: &Head) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    let mut text = serde_json::to_vec(head).expect("a head serializes");
    text.push(b'\n');
    file.write_all(&text)?;
    drop(file);
    fs::rename(&tmp, path)
}
