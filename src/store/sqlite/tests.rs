use std::os::unix::fs::PermissionsExt;

use chrono::TimeDelta;
use serde_json::json;

use super::*;
use crate::store::jobs::Job;
use tokio::sync::oneshot;

/// `t` as the store gives it back.
fn millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

fn pending(role: &str) -> Lease {
    let now = millis(Utc::now());
    Lease {
        id: crate::lease::new_id(role),
        role: role.to_string(),
        connection: "main".into(),
        username: format!("v_{role}_{}", rand::random::<u32>()),
        state: LeaseState::Pending,
        issued_at: now,
        expires_at: now + TimeDelta::hours(1),
        max_expires_at: now + TimeDelta::hours(24),
        renewable: true,
        attempts: 0,
        last_error: None,
        owner: Owner { uid: 1000, gid: 1000, pid: Some(4242), policy: None, node: None, unit: None },
        plugin_data: None,
        revoked_at: None,
        idempotency: None,
    }
}

fn temp_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("leases.db")).unwrap();
    (dir, store)
}

async fn state_of(store: &SqliteStore, id: &LeaseId) -> LeaseState {
    store.get(id).await.unwrap().unwrap().state
}

#[tokio::test]
async fn a_lease_round_trips_with_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/lessor/leases.db");
    let store = SqliteStore::open(&path).unwrap();

    let mut full = pending("app_ro");
    full.state = LeaseState::Irrevocable;
    full.renewable = false;
    full.attempts = 7;
    full.last_error = Some("role \"v_x\" cannot be dropped".into());
    full.owner = Owner {
        uid: u32::MAX,
        gid: 0,
        pid: None,
        policy: Some("web".into()),
        node: None,
        unit: Some("billing.service".into()),
    };
    full.idempotency = Some("ab".repeat(32));
    full.plugin_data = Some(json!({"db": "orders", "grants": ["SELECT"], "n": 1.5}));
    full.revoked_at = Some(millis(Utc::now()));
    let bare = pending("app_ro");

    for lease in [&full, &bare] {
        assert!(store.write(Write::Insert(lease.clone())).await.unwrap());
        assert_eq!(store.get(&lease.id).await.unwrap().as_ref(), Some(lease));
    }
    assert_eq!(store.get(&crate::lease::new_id("app_ro")).await.unwrap(), None);
    assert_eq!(store.find_idempotent(&"ab".repeat(32)).await.unwrap().as_ref(), Some(&full));
    assert_eq!(store.find_idempotent(&"cd".repeat(32)).await.unwrap(), None);
    let mut counts = store.live_counts().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        vec![("app_ro".to_string(), None, 1), ("app_ro".to_string(), Some("web".to_string()), 1)]
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("state")), 0o700);
}

#[tokio::test]
async fn writes_apply_only_in_their_states() {
    let (_dir, store) = temp_store();
    let lease = pending("app");
    let id = lease.id.clone();
    let later = millis(Utc::now()) + TimeDelta::hours(2);
    let renew = || Write::Renew { id: id.clone(), expires_at: later, renewed_at: millis(Utc::now()) };
    let failed = |attempts, irrevocable| Write::RevokeFailed {
        id: id.clone(),
        attempts,
        last_error: format!("attempt {attempts}"),
        irrevocable,
        retry_at: Utc::now(),
    };

    // Nothing applies to a lease that does not exist, except Insert.
    for write in
        [renew(), Write::StartRevoking { id: id.clone() }, failed(1, false), Write::Delete { id: id.clone() }]
    {
        assert!(!store.write(write).await.unwrap());
    }
    assert!(store.write(Write::Insert(lease)).await.unwrap());

    // pending
    assert!(!store.write(renew()).await.unwrap());
    assert!(!store.write(failed(1, false)).await.unwrap());
    let data = Some(json!({"grants": ["app_read"]}));
    assert!(store
        .write(Write::Activate { id: id.clone(), plugin_data: data.clone(), expires_at: None })
        .await
        .unwrap());

    // active
    assert!(!store
        .write(Write::Activate { id: id.clone(), plugin_data: None, expires_at: None })
        .await
        .unwrap());
    assert!(!store.write(failed(1, false)).await.unwrap());
    assert!(store.write(renew()).await.unwrap());
    let got = store.get(&id).await.unwrap().unwrap();
    assert_eq!((got.state, got.expires_at, got.plugin_data), (LeaseState::Active, later, data));
    assert!(store.write(Write::StartRevoking { id: id.clone() }).await.unwrap());

    // revoking
    assert!(!store.write(renew()).await.unwrap());
    assert!(!store.write(Write::StartRevoking { id: id.clone() }).await.unwrap());
    assert!(store.write(failed(1, false)).await.unwrap());
    assert_eq!(state_of(&store, &id).await, LeaseState::Revoking);
    assert!(store.write(failed(6, true)).await.unwrap());

    // irrevocable
    let got = store.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (got.state, got.attempts, got.last_error.as_deref()),
        (LeaseState::Irrevocable, 6, Some("attempt 6"))
    );
    assert!(!store.write(renew()).await.unwrap());
    assert!(store.write(failed(7, false)).await.unwrap());
    assert_eq!(state_of(&store, &id).await, LeaseState::Irrevocable);
    assert!(store.write(Write::StartRevoking { id: id.clone() }).await.unwrap());
    let at = millis(Utc::now());
    assert!(store.write(Write::Revoked { id: id.clone(), at }).await.unwrap());

    // revoked: final
    let got = store.get(&id).await.unwrap().unwrap();
    assert_eq!((got.state, got.revoked_at), (LeaseState::Revoked, Some(at)));
    for write in [
        renew(),
        Write::Activate { id: id.clone(), plugin_data: None, expires_at: None },
        Write::StartRevoking { id: id.clone() },
        failed(8, true),
        Write::Revoked { id: id.clone(), at: at + TimeDelta::hours(1) },
    ] {
        assert!(!store.write(write).await.unwrap());
    }
    assert_eq!(store.get(&id).await.unwrap().unwrap(), got);

    // Delete applies whatever the state.
    assert!(store.write(Write::Delete { id: id.clone() }).await.unwrap());
    assert_eq!(store.get(&id).await.unwrap(), None);

    // Revoked applies to every non-final state, pending included.
    let other = pending("app");
    store.write(Write::Insert(other.clone())).await.unwrap();
    assert!(store.write(Write::Revoked { id: other.id.clone(), at }).await.unwrap());
}

#[tokio::test]
async fn a_duplicate_fails_alone_in_its_batch() {
    let (dir, store) = temp_store();
    let path = dir.path().join("leases.db");
    let mut conn = open_writer(&path).unwrap();
    let (a, b) = (pending("app"), pending("app"));
    let mut replies = Vec::new();
    let mut batch = Vec::new();
    for write in [
        Write::Insert(a.clone()),
        Write::Insert(a.clone()),
        Write::Insert(b.clone()),
        Write::Activate { id: a.id.clone(), plugin_data: None, expires_at: None },
    ] {
        let (reply, answer) = oneshot::channel();
        batch.push(Job::Write(write, reply));
        replies.push(answer);
    }
    let commits = AtomicU64::new(0);
    commit_batch(&mut conn, &mut batch, &commits, &path);
    assert!(batch.is_empty());
    assert_eq!(commits.load(Ordering::Relaxed), 1);

    let mut outcomes = Vec::new();
    for answer in replies {
        outcomes.push(answer.await.unwrap());
    }
    assert!(matches!(outcomes[0], Ok(true)));
    assert!(matches!(&outcomes[1], Err(StoreError::Duplicate(id)) if *id == a.id), "{:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Ok(true)));
    assert!(matches!(outcomes[3], Ok(true)));
    assert_eq!(state_of(&store, &a.id).await, LeaseState::Active);
    assert_eq!(store.get(&b.id).await.unwrap(), Some(b.clone()));

    // And through the public API.
    let err = store.write(Write::Insert(b.clone())).await.unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(ref id) if *id == b.id));
    assert_eq!(err.to_string(), format!("lease {} already exists", b.id));

    // Another id with a username already leased on that connection is
    // refused too: two leases never share a username.
    let mut c = b.clone();
    c.id = crate::lease::new_id(&c.role);
    assert!(matches!(store.write(Write::Insert(c.clone())).await, Err(StoreError::Duplicate(_))));
    assert_eq!(store.get(&c.id).await.unwrap(), None);
    c.connection = format!("{}_other", c.connection);
    assert!(store.write(Write::Insert(c)).await.unwrap(), "the same name on another connection is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_are_durable_after_reopening() {
    let (dir, store) = temp_store();
    let store = Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let lease = pending(&format!("role{}", i % 7));
            assert!(store.write(Write::Insert(lease.clone())).await.unwrap());
            lease
        });
    }
    let mut written = tasks.join_all().await;
    written.sort_by(|a, b| a.id.cmp(&b.id));
    Arc::into_inner(store).unwrap().close().await.unwrap();

    let store = SqliteStore::open(&dir.path().join("leases.db")).unwrap();
    assert_eq!(store.list("", &[], Page::ALL).await.unwrap(), written);
    assert_eq!(store.settling(None, 1000).await.unwrap().len(), 200);
}

#[tokio::test]
async fn group_commit_batches_concurrent_writes() {
    // On this single-threaded runtime the tasks all queue their write
    // before any of them waits, so the writer sees them in few batches.
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let writes = 500;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writes {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.write(Write::Insert(pending("app"))).await.unwrap() });
    }
    assert!(tasks.join_all().await.into_iter().all(|inserted| inserted));
    let commits = store.commits();
    assert!(commits >= 1 && commits < writes / 2, "{commits} commits for {writes} writes");
    assert_eq!(store.list("app/", &[], Page::ALL).await.unwrap().len(), writes as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_asked_together_each_get_their_own_lease_and_see_every_write_before_them() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let mut leases = Vec::new();
    for _ in 0..300 {
        let lease = pending("gathered");
        store.write(Write::Insert(lease.clone())).await.unwrap();
        leases.push(lease);
    }
    // Many reads at once, known and unknown ids mixed, are gathered into
    // shared transactions; each answer is its own id's.
    let mut reads = tokio::task::JoinSet::new();
    for (n, lease) in leases.iter().enumerate() {
        let (reader, id) = (Arc::clone(&store), lease.id.clone());
        reads.spawn(async move { (Some(id.clone()), reader.get(&id).await.unwrap()) });
        if n % 3 == 0 {
            let store = Arc::clone(&store);
            let unknown = crate::lease::new_id("gathered");
            reads.spawn(async move { (None, store.get(&unknown).await.unwrap()) });
        }
    }
    let mut found = 0;
    while let Some(read) = reads.join_next().await {
        match read.unwrap() {
            (Some(id), Some(lease)) => {
                assert_eq!(lease.id, id);
                found += 1;
            }
            (Some(id), None) => panic!("{id} was written but read as missing"),
            (None, lease) => assert!(lease.is_none(), "an unknown id read as {lease:?}"),
        }
    }
    assert_eq!(found, leases.len());
    // A write answered before a read is asked is seen by it, however the
    // reads are batched.
    let mut writes = tokio::task::JoinSet::new();
    for lease in leases.clone() {
        let store = Arc::clone(&store);
        writes.spawn(async move {
            let write = Write::Activate { id: lease.id.clone(), plugin_data: None, expires_at: None };
            assert!(store.write(write).await.unwrap());
            assert_eq!(state_of(&store, &lease.id).await, LeaseState::Active);
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_store_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let first = SqliteStore::open(&path).unwrap();
    let e = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    first.close().await.unwrap();
    SqliteStore::open(&path).unwrap().close().await.unwrap();
}

#[tokio::test]
async fn reopening_migrates_once_and_keeps_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let lease = pending("app");
    let store = SqliteStore::open(&path).unwrap();
    store.write(Write::Insert(lease.clone())).await.unwrap();
    store.close().await.unwrap();

    for _ in 0..2 {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get(&lease.id).await.unwrap().as_ref(), Some(&lease));
        store.close().await.unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('leases')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        columns,
        [
            "id",
            "role",
            "connection",
            "username",
            "state",
            "issued_at",
            "expires_at",
            "max_expires_at",
            "renewable",
            "attempts",
            "last_error",
            "owner_uid",
            "owner_gid",
            "owner_pid",
            "plugin_data",
            "revoked_at",
            "owner_policy",
            "idempotency",
            "owner_unit",
            "renewed_at",
        ]
    );

    // A file from a newer lessor is refused, naming the file.
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Open { location, .. } if *location == path.display().to_string()));
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn leased_usernames_answers_for_every_state() {
    let (_dir, store) = temp_store();
    let (a, b, c) = (pending("a"), pending("b"), pending("c"));
    for lease in [&a, &b, &c] {
        store.write(Write::Insert(lease.clone())).await.unwrap();
    }
    let revoked_at = millis(Utc::now());
    store.write(Write::Revoked { id: c.id.clone(), at: revoked_at }).await.unwrap();
    let asked = vec![a.username.clone(), c.username.clone(), "v_nobody".to_string(), "v_%".to_string()];
    let leased = store.leased_usernames(&asked, revoked_at).await.unwrap();
    assert_eq!(leased, HashSet::from([a.username.clone(), c.username.clone()]));
    assert!(store.leased_usernames(&[], revoked_at).await.unwrap().is_empty());
    store.write(Write::Delete { id: a.id.clone() }).await.unwrap();
    assert_eq!(
        store.leased_usernames(&asked, revoked_at).await.unwrap(),
        HashSet::from([c.username.clone()])
    );
    // Revoked before the cut-off: no longer covered, so a stray.
    let later = revoked_at + chrono::Duration::milliseconds(1);
    assert!(store.leased_usernames(&asked, later).await.unwrap().is_empty());
}

#[tokio::test]
async fn pages_cover_every_lease_once_in_id_order() {
    let (_dir, store) = temp_store();
    let mut written = Vec::new();
    for role in ["a", "b"] {
        for _ in 0..25 {
            let lease = pending(role);
            store.write(Write::Insert(lease.clone())).await.unwrap();
            written.push(lease.id.to_string());
        }
    }
    written.sort();
    for (prefix, want) in [("", written.clone()), ("b/", written[25..].to_vec())] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list(prefix, &[], Page { after: after.as_deref(), limit: 7 }).await.unwrap();
            assert!(page.len() <= 7);
            seen.extend(page.iter().map(|l| l.id.to_string()));
            match page.last() {
                Some(last) if page.len() == 7 => after = Some(last.id.to_string()),
                _ => break,
            }
        }
        assert_eq!(seen, want, "prefix {prefix:?}");
    }
}

#[tokio::test]
async fn list_takes_the_prefix_literally() {
    let (_dir, store) = temp_store();
    let mut by_role = std::collections::BTreeMap::new();
    for role in ["app_r", "app_ro", "appxr", "APP_R", "app%r", "app", "b"] {
        let leases = [pending(role), pending(role)];
        for lease in &leases {
            store.write(Write::Insert(lease.clone())).await.unwrap();
        }
        by_role.insert(role, leases);
    }
    let ids = |leases: Vec<Lease>| leases.into_iter().map(|l| l.id.to_string()).collect::<Vec<_>>();
    let expected = |roles: &[&str]| {
        let mut ids: Vec<String> =
            roles.iter().flat_map(|r| by_role[r].iter().map(|l| l.id.to_string())).collect();
        ids.sort();
        ids
    };

    assert_eq!(ids(store.list("app_r/", &[], Page::ALL).await.unwrap()), expected(&["app_r"]));
    assert_eq!(ids(store.list("app_r", &[], Page::ALL).await.unwrap()), expected(&["app_r", "app_ro"]));
    assert_eq!(ids(store.list("app%", &[], Page::ALL).await.unwrap()), expected(&["app%r"]));
    assert_eq!(ids(store.list("zz", &[], Page::ALL).await.unwrap()), Vec::<String>::new());
    let all = ids(store.list("", &[], Page::ALL).await.unwrap());
    assert_eq!(all, expected(&["app_r", "app_ro", "appxr", "APP_R", "app%r", "app", "b"]));

    let gone = &by_role["app_r"][0].id;
    store.write(Write::Revoked { id: gone.clone(), at: Utc::now() }).await.unwrap();
    let listed =
        ids(store.list("app_r/", &[LeaseState::Revoked, LeaseState::Irrevocable], Page::ALL).await.unwrap());
    assert_eq!(listed, vec![by_role["app_r"][1].id.to_string()]);
    assert_eq!(store.list("app_r/", &[LeaseState::Pending], Page::ALL).await.unwrap().len(), 1);
}

/// Pages through a span read to its end.
async fn read_span(store: &SqliteStore, span: Span, warned: bool, limit: usize) -> (Vec<Unfinished>, usize) {
    let (mut seen, mut pages, mut from) = (Vec::new(), 0, None);
    loop {
        let (page, next) = if warned {
            store.warned(span, from.as_ref(), limit).await.unwrap()
        } else {
            store.expiring(span, from.as_ref(), limit).await.unwrap()
        };
        assert!(page.len() <= limit);
        pages += 1;
        seen.extend(page);
        match next {
            Some(next) => from = Some(next),
            None => return (seen, pages),
        }
    }
}

#[tokio::test]
async fn the_window_reads_settling_leases_and_spans_of_expiries_and_warnings() {
    let (_dir, store) = temp_store();
    let now = millis(Utc::now());
    let mut leases = Vec::new();
    for minutes in 0..25 {
        let mut lease = pending("app");
        lease.issued_at = now - TimeDelta::minutes(minutes);
        // Pairs of leases share an expiry, so a page may end between two.
        lease.expires_at = now + TimeDelta::minutes(30 - minutes / 2);
        store.write(Write::Insert(lease.clone())).await.unwrap();
        leases.push(lease);
    }
    for lease in &leases[..20] {
        store
            .write(Write::Activate { id: lease.id.clone(), plugin_data: None, expires_at: None })
            .await
            .unwrap();
    }
    store.write(Write::Revoked { id: leases[3].id.clone(), at: now }).await.unwrap();
    store.write(Write::StartRevoking { id: leases[4].id.clone() }).await.unwrap();
    // A renewal starts a new term: its warning falls two thirds into it.
    let renewed_at = now + TimeDelta::minutes(1);
    // 12 minutes from now, in the warnings' span below; from its issue it
    // would be 10 minutes, just outside.
    leases[5].expires_at = now + TimeDelta::seconds(17 * 60 + 30);
    let renew = Write::Renew { id: leases[5].id.clone(), expires_at: leases[5].expires_at, renewed_at };
    assert!(store.write(renew).await.unwrap());
    let active: Vec<&Lease> =
        leases[..20].iter().filter(|l| l.id != leases[3].id && l.id != leases[4].id).collect();

    // Settling: the pending and the revoking, by id, a page at a time.
    let mut settling = Vec::new();
    let mut after = None;
    loop {
        let page = store.settling(after.as_ref(), 2).await.unwrap();
        after = page.last().map(|u| u.id.clone());
        let full = page.len() == 2;
        settling.extend(page);
        if !full {
            break;
        }
    }
    let mut want: Vec<&LeaseId> = leases[20..].iter().chain([&leases[4]]).map(|l| &l.id).collect();
    want.sort();
    assert_eq!(settling.iter().map(|u| &u.id).collect::<Vec<_>>(), want);
    assert!(settling.iter().all(|u| u.node.is_none()));

    // Expiries: exactly the active leases in (after, until], in order.
    let span = Span {
        after: (now + TimeDelta::minutes(22)).timestamp_millis(),
        until: (now + TimeDelta::minutes(27)).timestamp_millis(),
    };
    let (seen, pages) = read_span(&store, span, false, 3).await;
    let mut want: Vec<&Lease> = active
        .iter()
        .copied()
        .filter(|l| (span.after + 1..=span.until).contains(&l.expires_at.timestamp_millis()))
        .collect();
    want.sort_by_key(|l| (l.expires_at, l.id.clone()));
    assert_eq!(
        seen.iter().map(|u| &u.id).collect::<Vec<_>>(),
        want.iter().map(|l| &l.id).collect::<Vec<_>>()
    );
    assert!(want.len() >= 8 && pages >= 3, "{} leases in {pages} pages", want.len());
    assert!(seen.iter().all(|u| u.state == LeaseState::Active && u.attempts == 0));
    let everything = read_span(&store, Span { after: i64::MIN, until: i64::MAX }, false, 4).await.0;
    assert_eq!(everything.len(), active.len());

    // Warnings: those whose warning falls in the span, as the window
    // computes it, within the millisecond the store rounds down.
    let span = Span {
        after: (now + TimeDelta::minutes(10)).timestamp_millis(),
        until: (now + TimeDelta::minutes(14)).timestamp_millis(),
    };
    let (seen, _) = read_span(&store, span, true, 2).await;
    let term = |l: &Lease| if l.id == leases[5].id { renewed_at } else { l.issued_at };
    let warned = |l: &Lease| crate::expiry::warning_at(term(l), l.expires_at).timestamp_millis();
    assert!(seen.iter().all(|u| u.renewed_at == (u.id == leases[5].id).then_some(renewed_at)));
    assert!(seen.iter().any(|u| u.id == leases[5].id), "the renewed lease's warning");
    let want: Vec<&LeaseId> = active
        .iter()
        .filter(|l| (span.after - 1..=span.until + 1).contains(&warned(l)))
        .map(|l| &l.id)
        .collect();
    let mut got: Vec<&LeaseId> = seen.iter().map(|u| &u.id).collect();
    got.sort();
    let mut want = want;
    want.sort();
    assert!(!want.is_empty());
    for id in &got {
        assert!(want.contains(id), "{id} read but its warning is outside the span");
    }
    for l in active.iter().filter(|l| (span.after + 1..=span.until - 1).contains(&warned(l))) {
        assert!(got.contains(&&l.id), "{} not read", l.id);
    }
}

#[tokio::test]
async fn purge_removes_only_leases_revoked_before_the_cutoff() {
    let (_dir, store) = temp_store();
    let now = millis(Utc::now());
    let [old, recent, live] = [pending("app"), pending("app"), pending("app")];
    for lease in [&old, &recent, &live] {
        store.write(Write::Insert(lease.clone())).await.unwrap();
    }
    store.write(Write::Revoked { id: old.id.clone(), at: now - TimeDelta::hours(2) }).await.unwrap();
    store.write(Write::Revoked { id: recent.id.clone(), at: now - TimeDelta::minutes(10) }).await.unwrap();

    assert_eq!(store.purge_revoked(now - TimeDelta::hours(1)).await.unwrap(), 1);
    assert_eq!(store.get(&old.id).await.unwrap(), None);
    assert!(store.get(&recent.id).await.unwrap().is_some());
    assert!(store.get(&live.id).await.unwrap().is_some());
    assert_eq!(store.purge_revoked(now - TimeDelta::hours(1)).await.unwrap(), 0);
    assert_eq!(store.purge_revoked(now).await.unwrap(), 1);
    assert_eq!(store.list("", &[], Page::ALL).await.unwrap(), vec![live]);
}

#[tokio::test]
async fn urls_name_absolute_or_relative_files() {
    assert_eq!(url_path("sqlite:///var/lib/lessor/leases.db"), Some(Path::new("/var/lib/lessor/leases.db")));
    assert_eq!(url_path("sqlite://state/leases.db"), Some(Path::new("state/leases.db")));
    for bad in [
        "sqlite://",
        "sqlite:leases.db",
        "postgres://host/db",
        "/var/lib/leases.db",
        "sqlite:///x.db?mode=rwc",
    ] {
        assert_eq!(url_path(bad), None, "{bad}");
        let err = SqliteStore::open_url(bad).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let store = SqliteStore::open_url(&format!("sqlite://{}", path.display())).unwrap();
    assert_eq!(store.path(), path);
    assert!(store.list("", &[], Page::ALL).await.unwrap().is_empty());
}

#[test]
fn prefix_upper_bounds_are_tight() {
    assert_eq!(prefix_upper_bound(""), None);
    assert_eq!(prefix_upper_bound("app_r/").as_deref(), Some("app_r0"));
    assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_upper_bound("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
    assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
}

#[test]
fn an_unusable_path_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}
