//! Bad input gets a precise 4xx and changes nothing.

use hyper::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common::*;

/// method, path, JSON body, raw body, expected status, text the error must hold.
type Case = (Method, String, Option<serde_json::Value>, Option<Vec<u8>>, u16, &'static str);

/// Sends a body far over the limit on a raw socket and reads the answer
/// while still writing: the daemon answers before reading it all and
/// closes, so a client that insists on finishing the write sees only a
/// broken pipe.
async fn oversized_body(socket: &std::path::Path, path: &str) -> (String, String) {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let size = 10 * 1024 * 1024;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    );
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&vec![b' '; size]).await;
    });
    let mut answer = Vec::new();
    let _ = reader.read_to_end(&mut answer).await;
    writing.abort();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_without_side_effects() {
    let db = TestDb::create().await;
    let (role, prefix) = unique_role("bad");
    db.track_prefix(&prefix);
    let body = format!("{}\n{}", pg_connection(&db, None), pg_role(&role, "1h", "2h", &[CREATE_ROLE]));
    let daemon = Daemon::start(&db, &body).await;
    let client = daemon.client();
    let creds = format!("/v1/creds/{role}");

    let cases: Vec<Case> = vec![
        (Method::POST, creds.clone(), None, Some(b"{\"ttl\": ".to_vec()), 400, "malformed JSON"),
        (Method::POST, creds.clone(), Some(json!({"ttl": 5})), None, 400, "malformed JSON"),
        (Method::POST, creds.clone(), Some(json!({"tll": "1m"})), None, 400, "unknown field"),
        (Method::POST, "/v1/creds/nope".into(), None, None, 404, "unknown role \"nope\""),
        (Method::POST, creds.clone(), Some(json!({"ttl": "3h"})), None, 400, "longer than role"),
        (Method::POST, creds.clone(), Some(json!({"ttl": "abc"})), None, 400, "invalid duration \"abc\""),
        (Method::POST, creds.clone(), Some(json!({"ttl": "0s"})), None, 400, "longer than 0s"),
        (Method::GET, "/v1/leases/..%2F..%2Fetc%2Fpasswd".into(), None, None, 400, "is not a lease id"),
        (Method::GET, format!("/v1/leases/{role}/..%2Fx"), None, None, 400, "is not a lease id"),
        (Method::DELETE, format!("/v1/leases/{role}/..%2F..%2Fx"), None, None, 400, "is not a lease id"),
        (Method::GET, format!("/v1/leases/{role}/doesnotexist"), None, None, 404, "unknown lease"),
        (Method::POST, "/v1/creds/a'b%22c".into(), None, None, 404, "unknown role"),
        (Method::POST, "/v1/leases/revoke".into(), Some(json!({})), None, 400, "prefix is required"),
        (Method::GET, "/v1/leases?prefx=a".into(), None, None, 400, "unknown query parameter \"prefx\""),
        (Method::PUT, "/v1/leases".into(), None, None, 405, "does not take that method"),
        (Method::GET, "/v1/nothing".into(), None, None, 404, "no such endpoint"),
        (
            Method::POST,
            format!("/v1/leases/{role}/x/renew"),
            Some(json!({"increment": "soon"})),
            None,
            400,
            "invalid duration",
        ),
    ];
    for (method, path, json_body, raw, status, needle) in cases {
        let response = match raw {
            Some(bytes) => client.request_raw(method.clone(), &path, bytes).await.unwrap(),
            None => client.request(method.clone(), &path, json_body.as_ref()).await.unwrap(),
        };
        assert_eq!(response.status, status, "{method} {path}: {:?}", response.body);
        let error = response
            .api_error()
            .unwrap_or_else(|| panic!("{method} {path}: no error envelope: {:?}", response.body));
        assert!(error.message.contains(needle), "{method} {path}: {:?} lacks {needle:?}", error.message);
    }
    let (status_line, body) = oversized_body(&daemon.socket, &creds).await;
    assert!(status_line.contains(" 413 "), "10 MB body: {status_line}");
    assert!(body.contains("larger than"), "10 MB body: {body}");

    assert!(daemon.leases().await.is_empty(), "a bad request left a lease");
    assert!(db.roles_with_prefix(&prefix).await.is_empty(), "a bad request left a role");
}
