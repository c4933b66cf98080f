//! No orphaned credentials: a daemon killed with SIGKILL in the middle of a
//! burst of issuances, or a client that hangs up mid-request, leaves no
//! role in PostgreSQL that an active lease does not cover (and a client
//! that hung up leaves none at all: nobody holds what it asked for).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_issuance_leaves_no_orphans() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("crash");
    db.track_prefix(&prefix);
    let body = format!(
        "{}{SHORT_OPERATIONS}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE, "SELECT pg_sleep(0.02)"])
    );
    let mut daemon = Daemon::start(&db, &body).await;
    kill_9_during_bursts(&mut daemon, &role, 10, || db.roles_with_prefix(&prefix)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_mid_request_leaves_no_orphans() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("hangup");
    db.track_prefix(&prefix);
    // A slow creation transaction, so the hang-up lands while the backend
    // is still working on the request.
    let slow = pg_role(&role, "1h", "2h", &[CREATE_ROLE, "SELECT pg_sleep(0.3)"]);
    let daemon = Daemon::start(&db, &format!("{}\n{slow}", pg_connection(&db, None))).await;
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        let request = format!(
            "POST /v1/creds/{role} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    wait_for("all ten issuances to be under way", Duration::from_secs(10), || async {
        (daemon.metric("lessor_issuances_in_flight").await >= 10.0).then_some(())
    })
    .await;
    drop(streams);
    // The abandoned issuances still finish, and since nobody holds what
    // they made, each credential is revoked as soon as it exists.
    wait_for("the abandoned issuances to finish and be revoked", Duration::from_secs(30), || async {
        let undelivered = daemon.metric("lessor_undelivered_revoked_total").await;
        (daemon.metric("lessor_issuances_in_flight").await == 0.0 && undelivered == 10.0).then_some(())
    })
    .await;
    assert_eq!(daemon.metric("lessor_leases_issued_total").await, 10.0, "every abandoned issuance completes");
    // The counter moves before the revocation's own store write: poll.
    wait_for("no active lease of a caller that hung up", Duration::from_secs(30), || async {
        daemon.settled_active_usernames().await.is_empty().then_some(())
    })
    .await;
    wait_for("the undelivered credentials to be gone", Duration::from_secs(30), || async {
        db.roles_with_prefix(&prefix).await.is_empty().then_some(())
    })
    .await;
}
