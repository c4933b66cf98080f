//! `lessor audit verify FILE...`: checks audit logs offline, without the
//! daemon (see [`crate::audit`] for the format).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{out, Failure};
use crate::audit::{self, Verified};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Check an audit log's hash chain and report the first line where it
    /// breaks (an edit, a removed or moved line, a torn line, records cut
    /// from the end). Several files are checked as one chain, oldest first.
    Verify {
        /// The log, or rotated logs in order (oldest first, current last).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Runs an `audit` command: exit 0 when every file checks out, 1 at the
/// first break (printed as `FILE:LINE: chain broken at seq N: what`).
pub(super) fn run(command: AuditCommand) -> Result<ExitCode, Failure> {
    let AuditCommand::Verify { files } = command;
    // The previous non-empty file: its name, last seq and head.
    let mut before: Option<(PathBuf, u64, String)> = None;
    for file in &files {
        let name = file.display();
        let found = match audit::verify(file) {
            Ok(found) => found,
            Err(broken) if broken.line == 0 => return Err(Failure::new(format!("{name}: {}", broken.what))),
            Err(broken) => {
                let seq = broken.seq.map_or_else(|| "?".to_string(), |s| s.to_string());
                eprintln!("{name}:{}: chain broken at seq {seq}: {}", broken.line, broken.what);
                return Ok(ExitCode::from(1));
            }
        };
        if let (Some((earlier, last, head)), Some(first)) = (&before, found.first_seq) {
            if first != last + 1 || found.continues_from.as_deref() != Some(head.as_str()) {
                eprintln!(
                    "{name}:1: chain broken at seq {}: does not continue {} (which ends at seq {last}, hash {head})",
                    last + 1,
                    earlier.display()
                );
                return Ok(ExitCode::from(1));
            }
        }
        out(&format!("{name}: {}\n", summary(&found)))?;
        for note in &found.notes {
            out(&format!("{name}: note: {note}\n"))?;
        }
        if let (Some(last), Some(head)) = (found.last_seq, found.head) {
            before = Some((file.clone(), last, head));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ok: 1234 records, seq 1..1234, head <hash>`, and where it continues from.
fn summary(found: &Verified) -> String {
    match (found.first_seq, found.last_seq, &found.head) {
        (Some(first), Some(last), Some(head)) => {
            let records = match found.records {
                1 => "1 record".to_string(),
                n => format!("{n} records"),
            };
            let mut text = format!("ok: {records}, seq {first}..{last}, head {head}");
            if let Some(prev) = &found.continues_from {
                text.push_str(&format!(", continues from {prev}"));
            }
            text
        }
        _ => "ok: 0 records".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    #[test]
    fn verify_takes_one_file_or_more() {
        let cli = Cli::try_parse_from(["lessor", "audit", "verify", "a.jsonl.1", "a.jsonl"]).unwrap();
        let Command::Audit(AuditCommand::Verify { files }) = cli.command else { panic!("{cli:?}") };
        assert_eq!(files, [PathBuf::from("a.jsonl.1"), PathBuf::from("a.jsonl")]);
        assert!(Cli::try_parse_from(["lessor", "audit", "verify"]).is_err());
    }

    #[test]
    fn the_summary_names_the_range_and_the_head() {
        let mut found = Verified {
            records: 1,
            first_seq: Some(8),
            last_seq: Some(8),
            head: Some("ab".repeat(32)),
            continues_from: Some("cd".repeat(32)),
            notes: Vec::new(),
        };
        assert_eq!(
            summary(&found),
            format!("ok: 1 record, seq 8..8, head {}, continues from {}", "ab".repeat(32), "cd".repeat(32))
        );
        found = Verified {
            records: 0,
            first_seq: None,
            last_seq: None,
            head: None,
            continues_from: None,
            ..found
        };
        assert_eq!(summary(&found), "ok: 0 records");
    }
}
