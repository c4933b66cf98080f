//! `Idempotency-Key`: a repeated issuance answers the same lease and
//! credential (one backend user), per owner; after a restart, a 409.

use std::process::Command;

use serde_json::Value;

use crate::common::*;

/// `POST /v1/creds/ROLE` with an `Idempotency-Key`, through curl, as `as`.
fn issue_with_key(daemon: &Daemon, role: &str, key: &str, nobody: bool) -> (u16, Value) {
    let args = [
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        daemon.socket.to_str().unwrap(),
        "-X",
        "POST",
        "-H",
        &format!("Idempotency-Key: {key}"),
        &format!("http://lessor/v1/creds/{role}"),
    ];
    let out = if nobody {
        daemon.as_nobody("curl").args(args).output().unwrap()
    } else {
        Command::new("curl").args(args).output().unwrap()
    };
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_answers_the_same_lease_and_credential_and_a_restart_gives_409() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("idem");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("nobody", "uid = 65534", &[&format!("creds:{role}")], ""),
    );
    let mut daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();

    let (s1, first) = issue_with_key(&daemon, &role, "sidecar-1", false);
    let (s2, second) = issue_with_key(&daemon, &role, "sidecar-1", false);
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first["lease_id"], second["lease_id"]);
    assert_eq!(first["credential"]["username"], second["credential"]["username"]);
    assert_eq!(first["credential"]["password"], second["credential"]["password"]);
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 1, "a repeated key made a second user");
    let username = first["credential"]["username"].as_str().unwrap();
    assert!(db.role_exists(username).await);

    // Another identity with the same key gets a lease of its own.
    let (s3, theirs) = issue_with_key(&daemon, &role, "sidecar-1", true);
    assert_eq!(s3, 200, "{theirs}");
    assert_ne!(theirs["lease_id"], first["lease_id"]);
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2);

    // A new key is a new lease; a revoked lease's key issues afresh.
    let (_, other) = issue_with_key(&daemon, &role, "sidecar-2", false);
    assert_ne!(other["lease_id"], first["lease_id"]);
    assert_eq!(daemon.client().revoke(other["lease_id"].as_str().unwrap()).await.unwrap().status, 200);
    let (_, renewed) = issue_with_key(&daemon, &role, "sidecar-2", false);
    assert_ne!(renewed["lease_id"], other["lease_id"]);

    // Concurrent requests with one key wait for each other: one user.
    let before = db.roles_with_prefix(&prefix).await.len();
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..4).map(|_| scope.spawn(|| issue_with_key(&daemon, &role, "burst", false))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|(s, a)| *s == 200 && a["lease_id"] == answers[0].1["lease_id"]),
        "{answers:?}"
    );
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), before + 1);

    // After a restart the key still finds its lease, but not its credential.
    daemon.stop();
    daemon.spawn().await;
    let (status, conflict) = issue_with_key(&daemon, &role, "sidecar-1", false);
    assert_eq!(status, 409, "{conflict}");
    let message = conflict["error"]["message"].as_str().unwrap();
    assert!(message.contains(first["lease_id"].as_str().unwrap()), "{message}");
    assert!(message.contains("revoke the lease, or send a new key"), "{message}");
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), before + 1, "the 409 made a user");

    let (status, bad) = issue_with_key(&daemon, &role, &"k".repeat(300), false);
    assert_eq!(status, 400, "{bad}");
}
