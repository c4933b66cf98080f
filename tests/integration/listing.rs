//! `GET /v1/leases` in pages (`limit`, `after`, `next`), so a daemon holding
//! many leases never builds one huge answer, and `lessor lease list` pages
//! through all of them.

use std::collections::BTreeSet;
use std::process::Command;

use chrono::{TimeDelta, Utc};
use lessor::lease::{Lease, LeaseState, Owner};
use lessor::store::{LeaseStore, SqliteStore, Write};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_2500_leases_in_pages_of_1000_returns_each_once() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("page");
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "2h", &[CREATE_ROLE]),
        policy("nobody", "user = \"nobody\"", &[&format!("creds:{role}")], "")
    );
    let mut daemon = Daemon::start(&db, &body).await;
    daemon.stop();

    // 2 500 active leases written straight into the store, as a daemon
    // that has been issuing for a while holds them (no backend roles: the
    // test ends long before they expire).
    let mut written = BTreeSet::new();
    {
        let store = SqliteStore::open(&daemon.dir.path().join("lessor.db")).unwrap();
        let now = Utc::now();
        for i in 0..2500 {
            let lease = Lease {
                id: lessor::lease::new_id(&role),
                role: role.clone(),
                connection: "pg".into(),
                username: format!("{prefix}{i:05}"),
                state: LeaseState::Active,
                issued_at: now,
                expires_at: now + TimeDelta::hours(1),
                max_expires_at: now + TimeDelta::hours(2),
                renewable: true,
                attempts: 0,
                last_error: None,
                owner: Owner { uid: 0, gid: 0, pid: None, policy: None, node: None, unit: None },
                plugin_data: None,
                revoked_at: None,
                idempotency: None,
            };
            written.insert(lease.id.as_str().to_string());
            store.write(Write::Insert(lease)).await.unwrap();
        }
        // Releases the store's lock before the daemon takes it.
        store.close().await.unwrap();
    }
    daemon.spawn().await;
    let client = daemon.client();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page =
            client.lease_list_page(Some(&format!("{role}/")), after.as_deref(), Some(1000)).await.unwrap();
        assert_eq!(page.status, 200, "{:?}", page.body);
        let leases = page.body["leases"].as_array().unwrap();
        assert!(leases.len() <= 1000, "a page of {}", leases.len());
        seen.extend(leases.iter().map(|l| l["lease_id"].as_str().unwrap().to_string()));
        pages += 1;
        match page.body["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
        assert!(pages < 10, "the pages do not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2500, "a lease was listed twice or missed");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), written);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages are in id order");

    // The default page is 1000 leases; a bad limit is refused.
    let first = client.lease_list(None).await.unwrap();
    assert_eq!(first.body["leases"].as_array().unwrap().len(), 1000);
    assert!(first.body["next"].is_string());
    for bad in ["0", "10001", "many"] {
        let r = client.request(hyper::Method::GET, &format!("/v1/leases?limit={bad}"), None).await.unwrap();
        assert_eq!(r.status, 400, "limit={bad}: {:?}", r.body);
    }

    // The CLI pages through all of them.
    let out = Command::new(env!("CARGO_BIN_EXE_lessor"))
        .args(["lease", "list", "--format", "json", "--prefix", &format!("{role}/")])
        .env("LESSOR_SOCKET", &daemon.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["leases"].as_array().unwrap().len(), 2500);

    // Another user sees only its own leases, page by page, however many of
    // root's stand between them.
    db.track_prefix(&prefix);
    daemon.open_to_all_users();
    let as_nobody = |program: &str, args: &[&str]| {
        let out = daemon.as_nobody(program).args(args).output().expect("run as nobody");
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let lessor = env!("CARGO_BIN_EXE_lessor");
    let mut own = BTreeSet::new();
    for _ in 0..3 {
        own.insert(
            as_nobody(lessor, &["creds", &role, "--format", "json"])["lease_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let socket = daemon.socket.display().to_string();
    let mut after = String::new();
    let mut pages = Vec::new();
    loop {
        let url = format!("http://localhost/v1/leases?limit=1&after={after}");
        let page = as_nobody("curl", &["-sS", "--fail", "--unix-socket", &socket, &url]);
        pages.push(
            page["leases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["lease_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
        );
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
        assert!(pages.len() < 10, "the pages do not end");
    }
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages.iter().all(|p| p.len() == 1), "{pages:?}");
    assert_eq!(pages.concat().into_iter().collect::<BTreeSet<_>>(), own);
    let listed = as_nobody(lessor, &["lease", "list", "--format", "json"]);
    assert_eq!(listed["leases"].as_array().unwrap().len(), 3);
}
