//! One transaction in one round trip.
//!
//! Creating a role is `BEGIN`, the role's statements and `COMMIT`: sent one
//! after another, that is a round trip each, and the server and lessor wait
//! on each other that many times per credential. Simple queries may be
//! pipelined instead: all of them are written to the connection together
//! and their answers read back in order. The transaction means the same:
//! a statement that fails aborts it, every later statement then fails
//! without effect ("current transaction is aborted"), and the `COMMIT` of
//! an aborted transaction rolls it back. So the first error is the one to
//! report, and nothing of the transaction is left behind.

use secrecy::{ExposeSecret, SecretString};

/// Which part of a pipelined transaction failed first.
#[derive(Debug)]
pub(crate) enum Failed {
    Begin(tokio_postgres::Error),
    /// The statement at this index (its transaction was rolled back).
    Statement(usize, tokio_postgres::Error),
    Commit(tokio_postgres::Error),
}

/// Runs `statements` in one transaction, sent together with its `BEGIN`
/// and `COMMIT`.
pub(crate) async fn pipelined(
    client: &tokio_postgres::Client,
    statements: &[SecretString],
) -> Result<(), Failed> {
    // tokio-postgres writes a request when its future is first polled, and
    // `join_all` polls in order: BEGIN, each statement, COMMIT.
    let sql = std::iter::once("BEGIN")
        .chain(statements.iter().map(|s| s.expose_secret()))
        .chain(std::iter::once("COMMIT"));
    let mut answers = futures_util::future::join_all(sql.map(|sql| client.batch_execute(sql))).await;
    let commit = answers.pop().expect("COMMIT's answer");
    let mut answers = answers.into_iter();
    answers.next().expect("BEGIN's answer").map_err(Failed::Begin)?;
    if let Some((i, e)) = answers.enumerate().find_map(|(i, answer)| answer.err().map(|e| (i, e))) {
        return Err(Failed::Statement(i, e));
    }
    commit.map_err(Failed::Commit)
}
