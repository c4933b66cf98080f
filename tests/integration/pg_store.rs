//! The lease store on PostgreSQL (a database of the password-auth test
//! cluster): the `LeaseStore` contract as the SQLite store keeps it, group
//! commit, migrations from several nodes at once, and a daemon that issues,
//! survives kill -9 and revokes on time with its leases there.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use futures_util::future::join_all;
use lessor::lease::{Lease, LeaseId, LeaseState, Owner};
use lessor::store::{
    LeaseStore, Page, PendingRotation, PostgresStore, RotationPhase, SealedCredential, Span, StaticRecord,
    StoreError, Write,
};
use secrecy::SecretString;

use crate::common::*;

/// A PostgreSQL store in the test database, as the test admin (who owns it).
pub(crate) async fn store(db: &TestDb, node: &str) -> PostgresStore {
    let password = SecretString::from(db.admin_password.clone());
    PostgresStore::open(&db.admin_url(), Some(&password), node).await.expect("open the PostgreSQL store")
}

fn lease(id: &str, username: &str, state: LeaseState) -> Lease {
    let now = Utc::now().trunc_subsecs(3);
    Lease {
        id: LeaseId::parse(id).unwrap(),
        role: id.split('/').next().unwrap().to_string(),
        connection: "pg".into(),
        username: username.into(),
        state,
        issued_at: now,
        expires_at: now + chrono::Duration::hours(1),
        max_expires_at: now + chrono::Duration::hours(2),
        renewable: true,
        attempts: 0,
        last_error: None,
        owner: Owner {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            policy: Some("web".into()),
            node: Some("node-a".into()),
            unit: Some("billing.service".into()),
        },
        plugin_data: Some(serde_json::json!({"k": [1, 2]})),
        revoked_at: None,
        idempotency: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_lease_store_contract() {
    let db = TestDb::create().await;
    let store = store(&db, "node-a").await;

    let first = lease("app/aaa", "v_app_a", LeaseState::Pending);
    assert!(store.write(Write::Insert(first.clone())).await.unwrap());
    assert_eq!(store.get(&first.id).await.unwrap(), Some(first.clone()));
    // A second insert of the id, or of the username on the connection, is a duplicate.
    let e = store.write(Write::Insert(first.clone())).await.unwrap_err();
    assert!(matches!(e, StoreError::Duplicate(_)), "{e}");
    let e = store.write(Write::Insert(lease("app/bbb", "v_app_a", LeaseState::Pending))).await.unwrap_err();
    assert!(matches!(e, StoreError::Duplicate(_)), "{e}");
    let node: String =
        db.su.query_one("SELECT node FROM leases WHERE id = 'app/aaa'", &[]).await.unwrap().get(0);
    assert_eq!(node, "node-a");

    // Writes apply only in their states.
    let later = (Utc::now() + chrono::Duration::minutes(90)).trunc_subsecs(3);
    let renewed_at = Utc::now().trunc_subsecs(3);
    let renew = Write::Renew { id: first.id.clone(), expires_at: later, renewed_at };
    assert!(!store.write(renew.clone()).await.unwrap(), "pending");
    let activate = Write::Activate { id: first.id.clone(), plugin_data: None, expires_at: None };
    assert!(store.write(activate.clone()).await.unwrap());
    assert!(!store.write(activate).await.unwrap(), "active already");
    assert!(store.write(renew).await.unwrap());
    let active = store.get(&first.id).await.unwrap().unwrap();
    assert_eq!((active.state, active.expires_at, active.plugin_data), (LeaseState::Active, later, None));
    assert!(store.write(Write::StartRevoking { id: first.id.clone() }).await.unwrap());
    let failed = Write::RevokeFailed {
        id: first.id.clone(),
        attempts: 6,
        last_error: "down".into(),
        irrevocable: true,
        retry_at: Utc::now(),
    };
    assert!(store.write(failed).await.unwrap());
    let stuck = store.get(&first.id).await.unwrap().unwrap();
    assert_eq!(
        (stuck.state, stuck.attempts, stuck.last_error.as_deref()),
        (LeaseState::Irrevocable, 6, Some("down"))
    );
    let at = Utc::now().trunc_subsecs(3);
    assert!(store.write(Write::Revoked { id: first.id.clone(), at }).await.unwrap());
    assert!(!store.write(Write::Revoked { id: first.id.clone(), at }).await.unwrap(), "revoked already");

    // Listing: a prefix is a range, not a pattern; pages follow the cursor.
    for (i, id) in ["app/b01", "app/b02", "app/b03", "ap_x/b04", "apq/b05"].iter().enumerate() {
        let mut l = lease(id, &format!("v_{i}"), LeaseState::Active);
        l.idempotency = (i == 1).then(|| "digest-1".to_string());
        store.write(Write::Insert(l)).await.unwrap();
    }
    let ids = |leases: Vec<Lease>| leases.into_iter().map(|l| l.id.to_string()).collect::<Vec<_>>();
    let all = store.list("app/", &[], Page::ALL).await.unwrap();
    assert_eq!(ids(all), ["app/aaa", "app/b01", "app/b02", "app/b03"]);
    let live =
        store.list("app/", &[LeaseState::Revoked], Page { after: Some("app/b01"), limit: 1 }).await.unwrap();
    assert_eq!(ids(live), ["app/b02"]);
    assert_eq!(ids(store.list("ap_", &[], Page::ALL).await.unwrap()), ["ap_x/b04"]);
    assert_eq!(store.find_idempotent("digest-1").await.unwrap().unwrap().id.as_str(), "app/b02");

    // The expiry window pages through the active leases by expiry, and
    // through this node's by warning.
    let all = Span { after: i64::MIN, until: i64::MAX };
    let (page, next) = store.expiring(all, None, 3).await.unwrap();
    assert_eq!(page.len(), 3);
    let (rest, end) = store.expiring(all, next.as_ref(), 3).await.unwrap();
    assert_eq!((rest.len(), end), (2, None));
    assert!(page
        .iter()
        .chain(&rest)
        .all(|u| u.state == LeaseState::Active && u.node.as_deref() == Some("node-a")));
    let mut by_expiry: Vec<_> = page.iter().chain(&rest).map(|u| (u.expires_at, u.id.clone())).collect();
    let sorted = {
        let mut s = by_expiry.clone();
        s.sort();
        s
    };
    assert_eq!(by_expiry, sorted);
    by_expiry.dedup();
    assert_eq!(by_expiry.len(), 5);
    let (warned, end) = store.warned(all, None, 10).await.unwrap();
    assert_eq!((warned.len(), end), (5, None));
    assert!(store.settling(None, 10).await.unwrap().is_empty());

    let names = vec!["v_app_a".to_string(), "v_0".into(), "nobody".into()];
    let leased = store.leased_usernames(&names, at).await.unwrap();
    assert_eq!(leased, ["v_app_a".to_string(), "v_0".into()].into_iter().collect());
    let leased = store.leased_usernames(&names, at + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(leased, ["v_0".to_string()].into_iter().collect(), "revoked before: a stray");
    // A username leased on any connection counts, whichever connections
    // sort before or after the others (two may name one server).
    for (id, connection, username) in [("app/c01", "aa", "v_first"), ("app/c02", "zz", "v_last")] {
        let mut l = lease(id, username, LeaseState::Pending);
        l.connection = connection.into();
        store.write(Write::Insert(l)).await.unwrap();
    }
    let names = vec!["v_first".to_string(), "v_last".into(), "v_0".into(), "nobody".into()];
    let leased = store.leased_usernames(&names, at).await.unwrap();
    assert_eq!(leased, ["v_first".to_string(), "v_last".into(), "v_0".into()].into_iter().collect());
    for id in ["app/c01", "app/c02"] {
        store.write(Write::Delete { id: LeaseId::parse(id).unwrap() }).await.unwrap();
    }
    let mut counts = store.live_counts().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("ap_x".into(), Some("web".into()), 1),
            ("app".into(), Some("web".into()), 3),
            ("apq".into(), Some("web".into()), 1)
        ]
    );
    assert!(store.count_by_role_and_state().await.unwrap().contains(&("app".into(), LeaseState::Revoked, 1)));
    assert_eq!(store.purge_revoked(at + chrono::Duration::seconds(1)).await.unwrap(), 1);
    assert_eq!(store.get(&first.id).await.unwrap(), None);
    assert!(store.write(Write::Delete { id: LeaseId::parse("apq/b05").unwrap() }).await.unwrap());

    // Static accounts: a record round-trips, claims exclude other holders.
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
    store.static_put(record.clone()).await.unwrap();
    assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()));
    let ttl = Duration::from_secs(30);
    let a = store.static_claim("billing", "node-a", ttl).await.unwrap().expect("nobody holds it");
    assert_eq!(store.static_claim("billing", "node-b", ttl).await.unwrap(), None, "held by node-a");
    assert!(store.static_renew(&a, ttl).await.unwrap());
    record.failures = 3;
    store.static_write(record.clone(), &a).await.unwrap();
    // The claim lapses by the store's clock (node-b's own does not count):
    // node-b takes it, and node-a's writes, renewals and release are refused.
    db.su
        .execute("UPDATE static_accounts SET claim_until = lessor_now_ms() - 1 WHERE name = 'billing'", &[])
        .await
        .unwrap();
    let b = store.static_claim("billing", "node-b", ttl).await.unwrap().expect("lapsed");
    let mut stale = record.clone();
    stale.pending = None;
    stale.version = 9;
    assert!(matches!(
        store.static_write(stale, &a).await,
        Err(StoreError::ClaimLost { ref name, ref holder }) if name == "billing" && holder == "node-a"
    ));
    assert!(!store.static_renew(&a, ttl).await.unwrap());
    store.static_release(&a).await.unwrap();
    assert_eq!(store.static_get("billing").await.unwrap(), Some(record.clone()), "nothing changed");
    let (holder, token, left): (Option<String>, Option<i64>, i64) = {
        let row = db
            .su
            .query_one(
                "SELECT claimed_by, claim_token, claim_until - lessor_now_ms() FROM static_accounts \
                 WHERE name = 'billing'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((holder.as_deref(), token), (Some("node-b"), Some(b.token)));
    assert!(left > 20_000 && left <= 30_000, "the claim lasts its ttl by the store's clock: {left} ms left");
    store.static_release(&b).await.unwrap();
    assert!(store.static_claim("billing", "node-a", ttl).await.unwrap().is_some(), "released");
    assert_eq!(store.static_get("billing").await.unwrap(), Some(record));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_writes_share_commits() {
    let db = TestDb::create().await;
    // Three nodes open the empty store at once: the advisory lock lets one
    // migrate and the others find the schema done. Each registers itself.
    let password = SecretString::from(db.admin_password.clone());
    let open = |node: &'static str| {
        let (url, password) = (db.admin_url(), password.clone());
        async move { PostgresStore::open(&url, Some(&password), node).await }
    };
    let (a, b, c) = tokio::join!(open("a"), open("b"), open("c"));
    let version: i32 = db.su.query_one("SELECT version FROM lessor_schema", &[]).await.unwrap().get(0);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/sql/postgres"))
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().path().extension().is_some_and(|ext| ext == "sql"))
        .count();
    assert_eq!(version as usize, migrations, "every migration of schemas/sql/postgres ran");
    let (a, _b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let nodes: Vec<String> = db
        .su
        .query("SELECT node_id FROM nodes ORDER BY node_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nodes, ["a", "b", "c"]);
    // A second live daemon with a node id in use is refused, and says by whom.
    let e = open("c").await.unwrap_err().to_string();
    assert!(
        e.contains("node_id \"c\" is in use by another live lessor on this store (lessor c from "),
        "{e}"
    );
    // Once that one is gone (its session ends), the id is free: opening
    // waits the instant that takes.
    drop(c);
    open("c").await.expect("node id c free once its daemon is gone");

    let writes = (0..400).map(|i| {
        let store = &a;
        async move {
            store
                .write(Write::Insert(lease(
                    &format!("burst/l{i:04}"),
                    &format!("v_burst_{i}"),
                    LeaseState::Pending,
                )))
                .await
        }
    });
    let results = futures_util::future::join_all(writes).await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(true))),
        "{:?}",
        results.iter().find(|r| !matches!(r, Ok(true)))
    );
    assert!(a.commits() < 200, "400 concurrent writes took {} commits: no group commit", a.commits());
    assert_eq!(a.list("burst/", &[], Page::ALL).await.unwrap().len(), 400);

    // A write the database refuses (attempts past the CHECK) fails alone;
    // the writes batched with it commit.
    let bad = Write::RevokeFailed {
        id: LeaseId::parse("burst/l0000").unwrap(),
        attempts: u32::MAX,
        last_error: "x".into(),
        irrevocable: false,
        retry_at: Utc::now(),
    };
    a.write(Write::StartRevoking { id: LeaseId::parse("burst/l0000").unwrap() }).await.unwrap();
    let (before, failed, after) = tokio::join!(
        a.write(Write::Insert(lease("mixed/m1", "v_mixed_1", LeaseState::Pending))),
        a.write(bad),
        a.write(Write::Insert(lease("mixed/m2", "v_mixed_2", LeaseState::Pending))),
    );
    assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
    assert!(before.unwrap() && after.unwrap());
    assert_eq!(a.list("mixed/", &[], Page::ALL).await.unwrap().len(), 2);

    // The same in a batch of hundreds, the refused write in the middle:
    // the batch's COMMIT goes out behind every write, so none of them ran
    // outside its transaction (one that had would have committed on its
    // own, and its second try, one write per transaction, would find it a
    // duplicate).
    let bad = || Write::RevokeFailed {
        id: LeaseId::parse("burst/l0000").unwrap(),
        attempts: u32::MAX,
        last_error: "x".into(),
        irrevocable: false,
        retry_at: Utc::now(),
    };
    let writes = (0..300).map(|i| {
        let write = match i {
            150 => bad(),
            _ => Write::Insert(lease(&format!("big/l{i:04}"), &format!("v_big_{i}"), LeaseState::Pending)),
        };
        a.write(write)
    });
    let commits = a.commits();
    let results = futures_util::future::join_all(writes).await;
    assert!(a.commits() - commits < 300, "no batch: {} commits", a.commits() - commits);
    for (i, result) in results.iter().enumerate() {
        match i {
            150 => assert!(matches!(result, Err(StoreError::Io(_))), "{result:?}"),
            _ => assert!(matches!(result, Ok(true)), "write {i}: {result:?}"),
        }
    }
    assert_eq!(a.list("big/", &[], Page::ALL).await.unwrap().len(), 299);
    // Hundreds of writes that each go as a statement of their own (a
    // delete is never grouped), the refused one among them: had any gone
    // out after the COMMIT, it would have deleted its lease on its own,
    // and its second try would find nothing (false).
    // They are queued while the writer waits on a row lock held here, so
    // they make one batch.
    db.su.batch_execute("BEGIN; SELECT 1 FROM leases WHERE id = 'burst/l0001' FOR UPDATE").await.unwrap();
    let held = a.write(Write::Delete { id: LeaseId::parse("burst/l0001").unwrap() });
    let queued = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: i64 =
                db.su.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[]).await.unwrap().get(0);
            if waiting > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the writer never waited on the lock");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writes = join_all((0..300).map(|i| match i {
            150 => a.write(bad()),
            _ => a.write(Write::Delete { id: LeaseId::parse(&format!("big/l{i:04}")).unwrap() }),
        }));
        // Every write is queued once the join has been polled a few times
        // (it takes 32 a poll); each yield here is one more poll.
        let release = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            db.su.batch_execute("COMMIT").await.unwrap();
        };
        tokio::join!(writes, release).0
    };
    let commits = a.commits();
    let (held, results) = tokio::join!(held, queued);
    assert!(held.unwrap());
    assert!(
        a.commits() - commits <= 3,
        "{} batches: the writes were not queued together",
        a.commits() - commits
    );
    for (i, result) in results.iter().enumerate() {
        match i {
            150 => assert!(matches!(result, Err(StoreError::Io(_))), "{result:?}"),
            _ => assert!(matches!(result, Ok(true)), "delete {i}: {result:?}"),
        }
    }
    assert!(a.list("big/", &[], Page::ALL).await.unwrap().is_empty());

    // A batch's writes of one kind go as one statement, and each still
    // gets its own answer: whether its lease was in the state to take it.
    let id = |i: usize| LeaseId::parse(&format!("burst/l{i:04}")).unwrap();
    let later = (Utc::now() + chrono::Duration::hours(3)).trunc_subsecs(3);
    let activate = |i: usize| Write::Activate {
        id: id(i),
        plugin_data: i.is_multiple_of(2).then(|| serde_json::json!({"n": i})),
        expires_at: i.is_multiple_of(3).then_some(later),
    };
    let answers = |results: Vec<Result<bool, StoreError>>| -> Vec<bool> {
        results.into_iter().map(|r| r.unwrap()).collect()
    };
    let first = answers(join_all((100..200).map(|i| a.write(activate(i)))).await);
    assert!(first.iter().all(|&changed| changed), "pending, so activated");
    let again = answers(join_all((100..300).map(|i| a.write(activate(i)))).await);
    assert_eq!(again, (100..300).map(|i| i >= 200).collect::<Vec<_>>(), "active already: unchanged");
    let active = a.list("burst/", &[LeaseState::Pending, LeaseState::Revoking], Page::ALL).await.unwrap();
    assert_eq!(active.len(), 200, "l0100-l0299 active");
    for lease in &active {
        let i: usize = lease.id.as_str()["burst/l".len()..].parse().unwrap();
        assert_eq!(
            lease.plugin_data,
            i.is_multiple_of(2).then(|| serde_json::json!({"n": i})),
            "{}",
            lease.id
        );
        let expires_at =
            if i.is_multiple_of(3) { later } else { lease.issued_at + chrono::Duration::hours(1) };
        assert_eq!(lease.expires_at, expires_at, "{}", lease.id);
    }
    // One lease written twice in a batch goes one write at a time, in order.
    let twice = answers(join_all([a.write(activate(300)), a.write(activate(300))]).await);
    assert_eq!(twice, [true, false]);
    let revoked_at = Utc::now().trunc_subsecs(3);
    let revoke = |i: usize| Write::Revoked { id: id(i), at: revoked_at };
    let first = answers(join_all((150..250).map(|i| a.write(revoke(i)))).await);
    assert!(first.iter().all(|&changed| changed));
    let again = answers(join_all((200..260).map(|i| a.write(revoke(i)))).await);
    assert_eq!(again, (200..260).map(|i| i >= 250).collect::<Vec<_>>(), "revoked already: unchanged");
    let gone = a.get(&id(240)).await.unwrap().unwrap();
    assert_eq!((gone.state, gone.revoked_at), (LeaseState::Revoked, Some(revoked_at)));
    let start = |i: usize| Write::StartRevoking { id: id(i) };
    let started = answers(join_all((255..265).map(|i| a.write(start(i)))).await);
    assert_eq!(started, (255..265).map(|i| i >= 260).collect::<Vec<_>>(), "revoked: no going back");
    // Inserts grouped: one whose id or username is taken is a duplicate.
    let inserts = (0..50).map(|i| match i {
        10 => lease("burst/l0005", "v_fresh_10", LeaseState::Pending),
        20 => lease("fresh/f20", "v_burst_7", LeaseState::Pending),
        _ => lease(&format!("fresh/f{i:02}"), &format!("v_fresh_{i}"), LeaseState::Pending),
    });
    let results = join_all(inserts.map(|l| a.write(Write::Insert(l)))).await;
    for (i, result) in results.iter().enumerate() {
        match i {
            10 | 20 => assert!(matches!(result, Err(StoreError::Duplicate(_))), "insert {i}: {result:?}"),
            _ => assert!(matches!(result, Ok(true)), "insert {i}: {result:?}"),
        }
    }
    let fresh = a.get(&LeaseId::parse("fresh/f03").unwrap()).await.unwrap().unwrap();
    let expected = lease("fresh/f03", "v_fresh_3", LeaseState::Pending);
    assert_eq!(
        (&fresh.role, &fresh.connection, &fresh.username, fresh.state, &fresh.plugin_data, fresh.renewable),
        (
            &expected.role,
            &expected.connection,
            &expected.username,
            expected.state,
            &expected.plugin_data,
            true
        )
    );
    assert_eq!(
        (
            fresh.owner.uid,
            fresh.owner.gid,
            fresh.owner.pid,
            fresh.owner.policy,
            fresh.owner.unit,
            fresh.owner.node
        ),
        (1000, 1000, Some(42), Some("web".into()), Some("billing.service".into()), Some("a".into()))
    );
    assert_eq!(
        (fresh.attempts, fresh.last_error, fresh.revoked_at, fresh.idempotency),
        (0, None, None, None)
    );
    assert_eq!(fresh.expires_at - fresh.issued_at, chrono::Duration::hours(1));
    assert_eq!(fresh.max_expires_at - fresh.issued_at, chrono::Duration::hours(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_the_postgres_store_issues_survives_kill_9_and_revokes_what_fell_due() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("pgstore");
    db.track_prefix(&prefix);
    let store =
        format!("store = {:?}\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = \"web-7\"", db.admin_url());
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let mut daemon = Daemon::start_on_store(&db, Some(&store), &body, &[]).await;
    let client = daemon.client();

    let kept = client.creds(&role, None).await.unwrap();
    assert_eq!(kept.status, 200, "{:?}", kept.body);
    let kept_id = kept.body["lease_id"].as_str().unwrap().to_string();
    let short = client.creds(&role, Some("3s")).await.unwrap();
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2);
    let rows: i64 =
        db.su.query_one("SELECT count(*) FROM leases WHERE node = 'web-7'", &[]).await.unwrap().get(0);
    assert_eq!(rows, 2, "the leases are in PostgreSQL, recorded as web-7's");

    // kill -9, then start again on the same store: the leases are there,
    // the short one is revoked on time, the other renews and revokes.
    daemon.kill9();
    daemon.spawn().await;
    let client = daemon.client();
    wait_for("the short lease's role to go", Duration::from_secs(15), || async {
        (!db.role_exists(&short_user).await).then_some(())
    })
    .await;
    assert_eq!(client.renew(&kept_id, Some("30m")).await.unwrap().status, 200);
    assert_eq!(client.revoke(&kept_id).await.unwrap().status, 200);
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
    let states: Vec<String> =
        db.su.query("SELECT state FROM leases", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(states, ["revoked", "revoked"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_cut_off_issuance_answers_503_and_everything_resumes_when_it_returns() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("pgcut");
    db.track_prefix(&prefix);
    // The store through a proxy the test can cut; the backend direct.
    let proxy = Proxy::start((db.host.clone(), db.port)).await;
    let url = format!("postgres://{}@{}:{}/{}", db.admin, db.host, proxy.port, db.database);
    let store = format!("store = {url:?}\nstore_password_file = \"PASSWORD_FILE\"");
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start_on_store(&db, Some(&store), &body, &[]).await;
    let client = daemon.client();
    assert_eq!(client.creds(&role, None).await.unwrap().status, 200);
    let short = client.creds(&role, Some("4s")).await.unwrap();
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();

    proxy.cut();
    let refused = client.creds(&role, None).await.unwrap();
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["code"], "store_unavailable");
    let health = client.health().await.unwrap();
    assert_eq!((health.status, health.body["status"].as_str()), (503, Some("degraded")), "{:?}", health.body);
    assert!(health.body["store"]["error"].as_str().unwrap().contains("reach the store"), "{:?}", health.body);
    assert!(!health.body.to_string().contains(&db.admin_password), "a password in health");
    assert_eq!(db.roles_with_prefix(&prefix).await.len(), 2, "nothing was created while the store was down");
    // The short lease falls due during the outage.
    let due: chrono::DateTime<chrono::Utc> = short.body["expires_at"].as_str().unwrap().parse().unwrap();
    wait_for("the short lease to fall due", Duration::from_secs(30), || async {
        (chrono::Utc::now() > due + chrono::Duration::seconds(1)).then_some(())
    })
    .await;

    proxy.restore();
    wait_for("issuance to work again", Duration::from_secs(30), || async {
        (client.creds(&role, None).await.unwrap().status == 200).then_some(())
    })
    .await;
    assert_eq!(client.health().await.unwrap().body["status"], "ready");
    wait_for("the lease that fell due in the outage to be revoked", Duration::from_secs(60), || async {
        (!db.role_exists(&short_user).await).then_some(())
    })
    .await;
    // And its lease is recorded revoked; nothing is lost.
    let states = wait_for("the store to record it", Duration::from_secs(10), || async {
        let rows = db.su.query("SELECT state FROM leases ORDER BY issued_at", &[]).await.unwrap();
        let states: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (states.get(1).map(String::as_str) == Some("revoked")).then_some(states)
    })
    .await;
    assert_eq!(states, ["active", "revoked", "active"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_copies_a_sqlite_store_and_the_postgres_daemon_revokes_what_falls_due() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("pgmig");
    db.track_prefix(&prefix);
    let (statics, _key_dir, _, _) =
        crate::rotation::pg_alternating(&db, "pmg", "billing", "overlap = \"1h\"").await;
    let body = format!("{statics}\n{}", pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let mut sqlite = Daemon::start(&db, &body).await;
    crate::rotation::settled(&sqlite, "billing", 1).await;
    let client = sqlite.client();
    let short = client.creds(&role, Some("8s")).await.unwrap();
    let short_user = short.body["credential"]["username"].as_str().unwrap().to_string();
    let long = client.creds(&role, None).await.unwrap();
    let long_id = long.body["lease_id"].as_str().unwrap().to_string();
    let account = client.static_get("billing").await.unwrap().body;
    sqlite.stop();

    let migrate = |node: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
            .args(["store", "migrate", "--from"])
            .arg(format!("sqlite://{}", sqlite.dir.path().join("lessor.db").display()))
            .args(["--to", &db.admin_url(), "--to-password-file"])
            .arg(sqlite.dir.path().join("admin.pw"))
            .args(["--node", node])
            .output()
            .unwrap()
    };
    let out = migrate("web-1");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("copied 2 leases and 1 static accounts"), "{said}");
    assert!(!said.contains(&db.admin_password));
    let out = migrate("web-1");
    assert!(!out.status.success(), "a second migration into the same store");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds leases already"));

    let store = "store = ADMIN_URL\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = \"web-1\""
        .replace("ADMIN_URL", &format!("{:?}", db.admin_url()));
    let postgres = Daemon::start_on_store(&db, Some(&store), &body, &[]).await;
    let client = postgres.client();
    wait_for("the short lease to be revoked on time", Duration::from_secs(20), || async {
        (!db.role_exists(&short_user).await).then_some(())
    })
    .await;
    assert_eq!(client.lease_get(&long_id).await.unwrap().body["state"], "active");
    let moved = client.static_get("billing").await.unwrap().body;
    assert_eq!(moved["version"], account["version"]);
    assert_eq!(moved["credential"], account["credential"], "the sealed secret opens as before");
    let (user, password) = (
        moved["credential"]["username"].as_str().unwrap(),
        moved["credential"]["password"].as_str().unwrap(),
    );
    db.login(user, password).await.expect("the migrated static credential logs in");
    assert_eq!(client.revoke(&long_id).await.unwrap().status, 200);
    assert!(db.roles_with_prefix(&prefix).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connection_verifies_the_servers_certificate() {
    let db = TestDb::create().await;
    let tls_dir = std::env::var("LESSOR_TEST_TLS_DIR").unwrap_or_else(|_| "/var/tmp/lessor-test-tls".into());
    let url = |ca: &str| {
        format!(
            "postgres://{}@localhost:{}/{}?sslmode=verify-full&sslrootcert={tls_dir}/{ca}",
            db.admin, db.port, db.database
        )
    };
    let password = SecretString::from(db.admin_password.clone());
    let store =
        PostgresStore::open(&url("ca.pem"), Some(&password), "tls-node").await.expect("open over TLS");
    store.write(Write::Insert(lease("tls/t1", "v_tls_1", LeaseState::Pending))).await.unwrap();
    let encrypted: i64 = db
        .su
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'lessor tls-node' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the store's sessions are not encrypted");
    drop(store);
    let e = PostgresStore::open(&url("other-ca.pem"), Some(&password), "tls-node").await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("unknown issuer"), "{e}");
    assert!(!e.to_string().contains(&db.admin_password));
}

#[test]
fn config_check_refuses_a_password_in_the_store_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lessor.toml");
    std::fs::write(
        &path,
        "[server]\nstore = \"postgres://lessor:hunter2@db:5432/lessor\"\nstore_password_env = \"X\"\nstore_password_file = \"/x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("server.store: holds a password"), "{text}");
    assert!(text.contains("not both"), "{text}");
    assert!(!text.contains("hunter2"), "the password is in the message: {text}");
}
