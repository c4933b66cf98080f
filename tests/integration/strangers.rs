//! A lease is its owner's alone, and a stranger cannot even tell whether it
//! exists: on every route that names a lease (native and Vault), a caller
//! that may not touch it gets byte for byte the answer for an id that does
//! not exist, and nothing happens to the lease. On a shared store, a
//! stranger's renewals take no claim, so they cannot keep the owner's busy.
//! The stranger is a real other uid, speaking HTTP through curl.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::common::*;

/// The owner of the leases, and a stranger: both match the role's policy.
const OWNER: u32 = 65533;
const STRANGER: u32 = 65534;

/// One request through curl on `daemon`'s socket as `uid` (gid 65534):
/// the status and the body, as bytes turned to text.
fn curl_as(daemon: &Daemon, uid: u32, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let socket = daemon.socket.to_str().unwrap().to_string();
    let url = format!("http://lessor{path}");
    let mut args = vec!["-sS", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", &socket, "-X", method];
    if let Some(body) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", body]);
    }
    args.push(&url);
    let out = daemon.as_user(uid, 65534, "curl").args(&args).output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

/// A lease of `role` issued to [`OWNER`]: its id and backend username.
fn issue_as_owner(daemon: &Daemon, role: &str) -> (String, String) {
    let (status, body) = curl_as(daemon, OWNER, "POST", &format!("/v1/creds/{role}"), None);
    assert_eq!(status, 200, "{body}");
    let issued: Value = serde_json::from_str(&body).unwrap();
    let id = issued["lease_id"].as_str().unwrap().to_string();
    (id, issued["credential"]["username"].as_str().unwrap().to_string())
}

/// An id of `role` that names no lease, as long as `like`.
fn made_up_id(role: &str, like: &str) -> String {
    let random = like.rsplit_once('/').unwrap().1;
    let mut id = format!("{role}/{}", rand_suffix(random.len()));
    while id == like {
        id = format!("{role}/{}", rand_suffix(random.len()));
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_the_answer_for_an_unknown_lease_on_every_route_and_changes_nothing() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("stranger");
    db.track_prefix(&prefix);
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "24h", &[CREATE_ROLE]),
        policy("apps", "gid = 65534", &[&format!("creds:{role}")], ""),
    );
    let daemon = Daemon::start(&db, &body).await;
    daemon.open_to_all_users();
    let (id, username) = issue_as_owner(&daemon, &role);
    let fake = made_up_id(&role, &id);
    let vault = |id: &str| format!("database/creds/{id}");

    // (method, path, body); {id} stands for the lease id, {vault} for its
    // Vault form.
    let routes: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/v1/leases/{id}", None),
        ("POST", "/v1/leases/{id}/renew", Some(r#"{"increment":"2h"}"#)),
        ("DELETE", "/v1/leases/{id}", None),
        ("PUT", "/v1/sys/leases/lookup", Some(r#"{"lease_id":"{vault}"}"#)),
        ("PUT", "/v1/sys/leases/renew", Some(r#"{"lease_id":"{vault}","increment":7200}"#)),
        ("PUT", "/v1/sys/leases/renew/{vault}", None),
        ("PUT", "/v1/sys/leases/revoke", Some(r#"{"lease_id":"{vault}"}"#)),
        ("PUT", "/v1/sys/leases/revoke/{vault}", None),
        ("PUT", "/v1/sys/leases/revoke", Some(r#"{"lease_id":"{vault}","sync":false}"#)),
        // lessor's form of an id on the Vault routes too.
        ("PUT", "/v1/sys/leases/lookup", Some(r#"{"lease_id":"{id}"}"#)),
        ("PUT", "/v1/sys/leases/revoke/{id}", None),
    ];
    let fill = |text: &str, id: &str| text.replace("{vault}", &vault(id)).replace("{id}", id);
    for (method, path, body) in routes {
        let ask = |id: &str| {
            curl_as(&daemon, STRANGER, method, &fill(path, id), body.map(|b| fill(b, id)).as_deref())
        };
        let (on_lease, on_nothing) = (ask(&id), ask(&fake));
        let unmask = |(status, body): (u16, String), id: &str| (status, body.replace(id, "{id}"));
        assert_eq!(
            unmask(on_lease, &id),
            unmask(on_nothing, &fake),
            "{method} {path}: a stranger can tell a live lease from no lease"
        );
    }
    // The answers themselves: lessor's 404, and what OpenBao answers for a
    // lease it does not know (tests/fixtures/vault).
    let (status, body) = curl_as(&daemon, STRANGER, "GET", &format!("/v1/leases/{id}"), None);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_lease")), "{body}");
    let lookup = format!(r#"{{"lease_id":"{}"}}"#, vault(&id));
    assert_eq!(
        curl_as(&daemon, STRANGER, "PUT", "/v1/sys/leases/lookup", Some(&lookup)),
        (400, "{\"errors\":[\"invalid lease\"]}".to_string())
    );
    let renew = curl_as(&daemon, STRANGER, "PUT", "/v1/sys/leases/renew", Some(&lookup));
    assert_eq!(renew, (400, "{\"errors\":[\"lease not found\"]}".to_string()));
    assert_eq!(curl_as(&daemon, STRANGER, "PUT", "/v1/sys/leases/revoke", Some(&lookup)).0, 204);

    // Nothing happened to the lease: not renewed, not revoked.
    let client = daemon.client();
    let lease = client.lease_get(&id).await.unwrap();
    assert_eq!(lease.body["state"], "active", "{:?}", lease.body);
    let issued_for = chrono::DateTime::parse_from_rfc3339(lease.body["expires_at"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(lease.body["issued_at"].as_str().unwrap()).unwrap();
    assert!(
        issued_for <= chrono::Duration::hours(1),
        "a stranger's renewal moved the expiry: {:?}",
        lease.body
    );
    assert!(db.role_exists(&username).await, "a stranger's revoke removed the role");

    // Its owner still reads, renews and revokes it; an admin sees 404 for
    // what does not exist.
    let owned = |method: &str, path: String, body: Option<&str>| curl_as(&daemon, OWNER, method, &path, body);
    assert_eq!(owned("GET", format!("/v1/leases/{id}"), None).0, 200);
    assert_eq!(owned("PUT", "/v1/sys/leases/lookup".into(), Some(&lookup)).0, 200);
    assert_eq!(owned("POST", format!("/v1/leases/{id}/renew"), Some(r#"{"increment":"2h"}"#)).0, 200);
    let missing = client.lease_get(&fake).await.unwrap();
    assert_eq!((missing.status, &missing.body["error"]["code"]), (404, &Value::from("unknown_lease")));
    assert_eq!(owned("DELETE", format!("/v1/leases/{id}"), None).0, 200);
    assert!(!db.role_exists(&username).await);
}

/// A claim on the lease row, each time one is taken, with the node that took it.
const CLAIM_LOG: &str = "
    CREATE TABLE claim_log (id text, claimed_by text, at timestamptz DEFAULT clock_timestamp());
    CREATE FUNCTION log_claim() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN INSERT INTO claim_log (id, claimed_by) VALUES (NEW.id, NEW.claimed_by); RETURN NEW; END $$;
    CREATE TRIGGER log_claim AFTER UPDATE OF claimed_by ON leases
        FOR EACH ROW WHEN (NEW.claimed_by IS NOT NULL) EXECUTE FUNCTION log_claim();
";

/// Two nodes on one PostgreSQL store: the owner renews on the node that
/// issued its lease while a stranger renews the same lease in a loop on both
/// nodes. Every owner renewal succeeds, every stranger's gets the answer
/// for an unknown lease, and the store's rows show no claim taken for a
/// stranger (none by the other node at all, one per owner renewal here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_renewals_on_a_shared_store_take_no_claim_and_keep_nothing_busy() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("stranger_pg");
    db.track_prefix(&prefix);
    let store = |node: &str| {
        format!("store = {:?}\nstore_password_file = \"PASSWORD_FILE\"\nnode_id = {node:?}", db.admin_url())
    };
    let body = format!(
        "{}\n{}\n{}",
        pg_connection(&db, None),
        pg_role(&role, "1h", "24h", &[CREATE_ROLE]),
        policy("apps", "gid = 65534", &[&format!("creds:{role}")], ""),
    );
    let home = Daemon::start_on_store(&db, Some(&store("home")), &body, &[]).await;
    let other = Daemon::start_on_store(&db, Some(&store("other")), &body, &[]).await;
    home.open_to_all_users();
    other.open_to_all_users();
    let (id, _) = issue_as_owner(&home, &role);
    db.su.batch_execute(CLAIM_LOG).await.unwrap();
    let renew = format!("/v1/leases/{id}/renew");
    let fake = made_up_id(&role, &id);
    let unknown = curl_as(&home, STRANGER, "POST", &format!("/v1/leases/{fake}/renew"), None);
    assert_eq!(unknown.0, 404, "{unknown:?}");
    let expected = (404, unknown.1.replace(&fake, &id));

    let home = Arc::new(home);
    let other = Arc::new(other);
    let stop = Arc::new(AtomicBool::new(false));
    let strangers: Vec<_> = [home.clone(), other.clone()]
        .into_iter()
        .map(|node| {
            let (stop, renew) = (stop.clone(), renew.clone());
            tokio::task::spawn_blocking(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) || answers.len() < 10 {
                    answers.push(curl_as(&node, STRANGER, "POST", &renew, Some(r#"{"increment":"1h"}"#)));
                }
                answers
            })
        })
        .collect();
    const OWNER_RENEWALS: usize = 25;
    let owner = {
        let (home, renew) = (home.clone(), renew.clone());
        tokio::task::spawn_blocking(move || {
            (0..OWNER_RENEWALS)
                .map(|_| curl_as(&home, OWNER, "POST", &renew, Some(r#"{"increment":"1h"}"#)))
                .collect::<Vec<_>>()
        })
    };
    let owner = owner.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for (status, body) in &owner {
        assert_eq!(*status, 200, "the owner's renewal failed while a stranger renewed: {body}");
    }
    for (node, answers) in ["home", "other"].iter().zip(strangers) {
        let answers = answers.await.unwrap();
        assert!(answers.len() >= 10);
        for answer in answers {
            assert_eq!(answer, expected, "a stranger on node {node} got another answer than for no lease");
        }
    }
    let claims: Vec<(String, i64)> = db
        .su
        .query("SELECT claimed_by, count(*) FROM claim_log WHERE id = $1 GROUP BY claimed_by", &[&id])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        claims,
        [("home".to_string(), OWNER_RENEWALS as i64)],
        "claims other than the owner's renewals"
    );
    let lease = home.client().lease_get(&id).await.unwrap();
    assert_eq!(lease.body["state"], "active");
}
