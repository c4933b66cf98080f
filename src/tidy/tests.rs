use super::*;

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lessor_plugin::{BackendUser, Capabilities, ConfigError, CreateRequest, Created, RoleSettings};

use crate::config::Duration;

use crate::lease::{Lease, LeaseState, Owner};
use crate::store::{SqliteStore, Write};

/// A backend that is a set of users with optional creation times.
#[derive(Debug, Default)]
struct FakeBackend {
    users: Mutex<BTreeMap<String, Option<DateTime<Utc>>>>,
    fail_list: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Plugin for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { renewable: false, revocable: true, max_username_len: 63 }
    }
    fn check_role(&self, _: &str, _: &toml::Table) -> Result<RoleSettings, ConfigError> {
        Ok(Arc::new(()))
    }
    async fn verify(&self) -> Result<(), PluginError> {
        Ok(())
    }
    async fn create(&self, _: &CreateRequest<'_>) -> Result<Created, PluginError> {
        Err(PluginError::Unsupported { operation: "create" })
    }
    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<(), PluginError> {
        assert!(lease.settings.is_none(), "tidy drops with the default recipe");
        self.users.lock().unwrap().remove(lease.username);
        Ok(())
    }
    async fn list_users(&self, prefix: &str) -> Result<Vec<BackendUser>, PluginError> {
        if self.fail_list.load(Ordering::Relaxed) {
            return Err(PluginError::Unavailable { message: "down".into() });
        }
        Ok(self
            .users
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, c)| BackendUser { name: n.clone(), created_at: *c })
            .collect())
    }
}

fn lease(username: &str, state: LeaseState) -> Lease {
    let now = Utc::now();
    Lease {
        id: crate::lease::new_id("app"),
        role: "app".into(),
        connection: "other".into(),
        username: username.into(),
        state,
        issued_at: now,
        expires_at: now,
        max_expires_at: now,
        renewable: false,
        attempts: 0,
        last_error: None,
        owner: Owner { uid: 0, gid: 0, pid: None, policy: None, node: None, unit: None },
        plugin_data: None,
        revoked_at: None,
        idempotency: None,
    }
}

fn tidy(backend: Arc<FakeBackend>, store: Arc<dyn LeaseStore>, grace: u64) -> Tidy {
    let target = Target {
        plugin: backend,
        settings: TidySettings {
            prefix: "v_".into(),
            grace: Duration::from_secs(grace),
            interval: crate::config::DEFAULT_TIDY_INTERVAL,
        },
        timeout: StdDuration::from_secs(5),
        running: tokio::sync::Mutex::new(()),
        first_seen: Mutex::new(HashMap::new()),
        static_users: HashSet::from(["v_static_account".to_string()]),
    };
    Tidy {
        targets: BTreeMap::from([("db".to_string(), Some(target)), ("off".to_string(), None)]),
        store,
        audit: crate::audit::Audit::disabled(),
        node: "test".into(),
    }
}

async fn store() -> (tempfile::TempDir, Arc<dyn LeaseStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("lessor.db")).unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn drops_exactly_the_uncovered_users_under_the_prefix() {
    // A recorder of this test's own, on its (only) thread.
    let recorder = crate::metrics::recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let (_dir, store) = store().await;
    let backend = Arc::new(FakeBackend::default());
    let old = Some(Utc::now() - chrono::Duration::hours(1));
    for name in [
        "v_stray_1",
        "v_stray_2",
        "v_pending",
        "v_active",
        "v_revoked",
        "v_revoked_long_ago",
        "v_static_account",
        "other_user",
    ] {
        backend.users.lock().unwrap().insert(name.into(), old);
    }
    // Any state covers a user, on any connection; `revoked` only for
    // the grace (300 s) after the revocation.
    for (name, state) in [
        ("v_pending", LeaseState::Pending),
        ("v_active", LeaseState::Active),
        ("v_revoked", LeaseState::Revoked),
        ("v_revoked_long_ago", LeaseState::Revoked),
    ] {
        let pending = lease(name, LeaseState::Pending);
        let id = pending.id.clone();
        store.write(Write::Insert(pending)).await.unwrap();
        if state == LeaseState::Revoked {
            let at =
                if name == "v_revoked" { Utc::now() } else { Utc::now() - chrono::Duration::seconds(301) };
            store.write(Write::Revoked { id, at }).await.unwrap();
        } else if state == LeaseState::Active {
            store.write(Write::Activate { id, plugin_data: None, expires_at: None }).await.unwrap();
        }
    }
    let tidy = tidy(backend.clone(), store, 300);

    let dry = tidy.run(Some("db"), true).await.unwrap();
    assert_eq!(dry[0].would_drop, ["v_revoked_long_ago", "v_stray_1", "v_stray_2"]);
    assert!(dry[0].dropped.is_empty() && dry[0].errors.is_empty());
    assert_eq!(backend.users.lock().unwrap().len(), 8, "a dry run dropped something");

    let done = tidy.run(None, false).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].connection, "db");
    assert_eq!(done[0].dropped, ["v_revoked_long_ago", "v_stray_1", "v_stray_2"]);
    let left: HashSet<String> = backend.users.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        left,
        HashSet::from(
            ["v_pending", "v_active", "v_revoked", "v_static_account", "other_user"].map(String::from)
        )
    );
    let text = recorder.handle().render();
    assert!(text.contains("lessor_tidy_dropped_total{connection=\"db\"} 3\n"), "{text}");
    assert!(text.contains("lessor_tidy_runs_total{connection=\"db\"} 2\n"), "{text}");
}

#[tokio::test]
async fn young_users_wait_for_the_grace() {
    let (_dir, store) = store().await;
    let backend = Arc::new(FakeBackend::default());
    // The backend's clock says it was made just now: young for an hour.
    backend.users.lock().unwrap().insert("v_known".into(), Some(Utc::now() + chrono::Duration::hours(1)));
    // No creation time: the age counts from the first sweep that sees it.
    backend.users.lock().unwrap().insert("v_unknown".into(), None);
    let tidy = tidy(backend.clone(), store, 1);
    let target = tidy.targets["db"].as_ref().unwrap();

    let first = tidy.sweep("db", target, false).await;
    assert!(first.report.dropped.is_empty(), "{:?}", first.report);
    let follow_up = first.follow_up.expect("a follow-up for the young users");
    assert!(follow_up - Instant::now() <= StdDuration::from_secs(1));

    tokio::time::sleep_until(follow_up).await;
    let second = tidy.sweep("db", target, false).await;
    assert_eq!(second.report.dropped, ["v_unknown"], "first seen a grace ago");
    assert!(backend.users.lock().unwrap().contains_key("v_known"));
}

#[tokio::test]
async fn grace_zero_drops_at_once_and_errors_are_reported() {
    let (_dir, store) = store().await;
    let backend = Arc::new(FakeBackend::default());
    backend.users.lock().unwrap().insert("v_x".into(), None);
    let tidy = tidy(backend.clone(), store, 0);
    assert_eq!(tidy.run(Some("db"), false).await.unwrap()[0].dropped, ["v_x"]);

    backend.fail_list.store(true, Ordering::Relaxed);
    let report = &tidy.run(Some("db"), false).await.unwrap()[0];
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("listing users"), "{report:?}");

    assert!(matches!(tidy.run(Some("nope"), true).await, Err(TidyError::UnknownConnection { .. })));
    assert!(matches!(tidy.run(Some("off"), true).await, Err(TidyError::NotEnabled { .. })));
}
