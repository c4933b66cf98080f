//! The socket API end to end, minus the socket: the real axum router with
//! its guard layer, over the state `daemon::start` builds (broker, tidy,
//! rotator) for a config with no connections, on a temporary SQLite store
//! holding two revoked leases, driven with `tower::ServiceExt::oneshot`
//! by arbitrary method, caller, path (query included) and body.
//!
//! Input: byte 0 picks the method, byte 1 the caller (root, the owner of a
//! seeded lease, a stranger, nobody), then the path up to the first `\n`,
//! then the body.
//!
//! Findings: a panic, any 5xx answer other than the guard's timeout 503,
//! and an error answer that is not the documented
//! `{"error":{"code":"…","message":"…"}}` JSON.
//!
//! Shared by the fuzz target of the same name and by the corpus replay
//! test (`tests/fuzz_corpora.rs`), which runs every input of
//! `fuzz/corpus/api_body` in CI.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::Router;
use http_body_util::BodyExt;
use lessor::api::{router, AppState, PeerInfo};
use lessor::lease::{Lease, LeaseId, LeaseState, Owner};
use lessor::policy::Identity;
use lessor::store::{LeaseStore, SqliteStore, Write};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const METHODS: [Method; 8] = [
    Method::GET,
    Method::POST,
    Method::DELETE,
    Method::PUT,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::POST,
];

/// The uid owning the first seeded lease.
const OWNER_UID: u32 = 1000;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

fn revoked_lease(id: &str, username: &str, owner_uid: u32) -> Lease {
    let now = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap();
    let id = LeaseId::parse(id).expect("a valid seeded id");
    Lease {
        role: id.role().to_string(),
        id,
        connection: "gone".into(),
        username: username.into(),
        state: LeaseState::Revoked,
        issued_at: now - chrono::Duration::minutes(5),
        expires_at: now + chrono::Duration::hours(1),
        max_expires_at: now + chrono::Duration::hours(24),
        renewable: true,
        attempts: 0,
        last_error: None,
        owner: Owner {
            uid: owner_uid,
            gid: owner_uid,
            pid: Some(4242),
            policy: None,
            node: None,
            unit: None,
        },
        plugin_data: Some(serde_json::json!({ "seeded": true })),
        revoked_at: Some(now),
        idempotency: None,
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store_path: PathBuf = dir.path().join("leases.db");
        let text = format!(
            "[server]\nsocket = {:?}\nstore = \"sqlite://{}\"\nrequest_timeout = \"10s\"\nmax_body_bytes = 4096\n",
            dir.path().join("unused.sock").display().to_string(),
            store_path.display()
        );
        let config = lessor::daemon::load_str(&text, "(fuzz)").unwrap_or_else(|e| panic!("{e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let app = runtime.block_on(async {
            let store = SqliteStore::open(&store_path).expect("the store opens");
            let store: Arc<dyn LeaseStore> = Arc::new(store);
            for lease in [
                revoked_lease("app_ro/AAAAAAAAAAAAAAAAAAAAAA", "v_app_ro_0123456789abcdef", OWNER_UID),
                revoked_lease("batch-2/Zz09Zz09", "v_batch_2_0123456789abcdef", 4242),
            ] {
                assert!(store.write(Write::Insert(lease)).await.expect("seeding"));
            }
            // As `daemon::start` builds and starts them, minus the socket and
            // tidy's schedule (no connection has tidy on).
            let state = AppState::new(&config, store, CancellationToken::new());
            state.broker.start();
            state.rotator.start();
            while !state.broker.is_ready() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            router(state)
        });
        Harness { runtime, app, _dir: dir }
    })
}

fn peer(selector: u8) -> PeerInfo {
    let uid = match selector & 3 {
        0 => 0,
        1 => OWNER_UID,
        2 => 4242,
        _ => u32::MAX,
    };
    let pid = (selector & 4 == 0).then(|| std::process::id() as i32);
    PeerInfo::with_identity(Identity { uid, gid: uid, pid, ..Identity::default() })
}

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let [method, caller, rest @ ..] = data else { return };
    let method = METHODS[usize::from(*method) % METHODS.len()].clone();
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(uri) = Uri::try_from(path) else { return };
    if uri.scheme().is_some() || uri.authority().is_some() {
        return; // a socket request line carries an origin-form target
    }
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Body::from(body.to_vec()))
        .expect("a valid request");
    request.extensions_mut().insert(ConnectInfo(peer(*caller)));

    let h = harness();
    let method_sent = method.clone();
    let (status, body) = h.runtime.block_on(async move {
        let method = method_sent;
        let response = h.app.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/x-ndjson"));
        let mut body = response.into_body();
        if streaming {
            // GET /v1/watch never ends: its first line (the snapshot) is
            // enough; dropping the body hangs up, as a client would.
            let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("{status}: no first line within 5 s"));
            let Some(frame) = first else {
                assert_eq!(method, Method::HEAD, "{status}: a stream without a first line");
                return (status, Default::default());
            };
            let frame = frame.expect("a readable body");
            let line = frame.into_data().unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&line).expect("a JSON first line");
            return (status, line);
        }
        let body = body.collect().await.expect("a response body").to_bytes();
        (status, body)
    });

    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let code = json.as_ref().and_then(|j| j["error"]["code"].as_str()).map(str::to_string);
    let text = String::from_utf8_lossy(&body);
    if status.is_server_error() {
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && code.as_deref() == Some("timeout"),
            "{method} {}: {status} {text}",
            String::from_utf8_lossy(path)
        );
    }
    if (status.is_client_error() || status.is_server_error()) && method != Method::HEAD {
        let shaped = code.is_some() && json.as_ref().is_some_and(|j| j["error"]["message"].is_string());
        assert!(
            shaped,
            "{method} {}: {status} without the documented JSON error: {text}",
            String::from_utf8_lossy(path)
        );
    }
}
