//! A small HTTP/1.1 client for the daemon's Unix socket.
//!
//! The CLI, the integration tests and the benchmarks all talk to `lessor
//! serve` the way an application would: JSON over HTTP/1.1 on the socket,
//! with the caller's identity taken by the kernel from that socket. Keeping
//! one client here means the three exercise the same path.
//!
//! Every call opens a fresh connection. That costs one `connect(2)` on a
//! local socket and gives the daemon a new `SO_PEERCRED` reading per
//! request, which is what a short-lived CLI process needs anyway; a pooling
//! client for applications is a different type.
//!
//! A non-2xx status is not an error here: the daemon answered, and its
//! `{"error":{"code","message"}}` body is returned in [`Response`] for the
//! caller to present. [`ClientError`] is only for not getting an answer.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tokio::net::UnixStream;

/// Everything but RFC 3986's unreserved characters is encoded, `/` included,
/// so a lease id is always a single path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A client for one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// The daemon's answer, whatever its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body; `Null` when the body was empty, a `String` when the
    /// daemon answered with something other than JSON (e.g. metrics text).
    pub body: Value,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `{"error":{"code","message"}}` envelope, if the body is one.
    pub fn api_error(&self) -> Option<ApiError> {
        let error = self.body.get("error")?;
        Some(ApiError {
            code: error.get("code")?.as_str()?.to_string(),
            message: error.get("message")?.as_str()?.to_string(),
        })
    }
}

/// An error the daemon reported in its error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Machine-readable code, e.g. `unknown_role`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

/// Why no answer could be had from the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be connected to: no daemon, or no permission.
    #[error("cannot reach lessor at {}: {} ({})", socket.display(), io_message(source), connect_hint(source))]
    Connect {
        /// The socket that was tried.
        socket: PathBuf,
        /// What `connect(2)` said.
        source: io::Error,
    },
    /// The request could not be built (e.g. a path that is not a valid URI).
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The HTTP exchange failed after connecting (the daemon closed the
    /// connection, or spoke something other than HTTP/1.1).
    #[error("talking to lessor failed: {0}")]
    Http(#[from] hyper::Error),
    /// The daemon said its body is JSON, but it is not.
    #[error("lessor sent an invalid JSON body (HTTP {status}): {source}")]
    Decode {
        /// The status of the response whose body failed to parse.
        status: u16,
        /// The parse error (position only; it never quotes the body).
        source: serde_json::Error,
    },
    /// The daemon's answers do not hold together (a list cursor that does
    /// not move).
    #[error("lessor answered inconsistently: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the daemon could not be talked to at all, as opposed to
    /// having answered something unusable. The CLI exits 2 for these.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Http(_))
    }
}

/// `io::Error`'s text without the "(os error N)" tail, which says nothing
/// more to a person.
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_string(),
        None => text,
    }
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "is this user allowed on the socket? check its group and mode",
        _ => "is `lessor serve` running? set --socket or LESSOR_SOCKET if it listens elsewhere",
    }
}

/// The API path of a lease, with the id percent-encoded into one segment
/// (`app_ro/abc` → `/v1/leases/app_ro%2Fabc`).
pub fn lease_path(lease_id: &str) -> String {
    format!("/v1/leases/{}", utf8_percent_encode(lease_id, SEGMENT))
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Client {
    /// A client for the daemon listening on `socket`. Nothing is connected
    /// until a request is made.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request on a fresh connection. `path` is the request
    /// target, already encoded (`/v1/leases?prefix=app_ro%2F`). A `body`
    /// is sent as JSON; without one the request has no body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, ClientError> {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        let request = match body {
            Some(body) => builder
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("a JSON value serializes"))))?,
            None => builder.body(Full::new(Bytes::new()))?,
        };
        let (status, is_json, bytes) = self.exchange(request).await?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(source) if is_json => return Err(ClientError::Decode { status, source }),
                Err(_) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            }
        };
        Ok(Response { status, body })
    }

    /// Sends raw bytes as a JSON-typed body, well-formed or not: for tests
    /// of how the daemon treats bad input.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let (status, _, bytes) = self.exchange(request).await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Response { status, body })
    }

    /// `GET /v1/watch`: calls `on_event` with each event the daemon streams,
    /// as it arrives, until `on_event` returns `false` or the stream ends
    /// (then the answer is a 200 with no body). A refusal is answered like
    /// any other request's.
    pub async fn watch(&self, mut on_event: impl FnMut(Value) -> bool) -> Result<Response, ClientError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/v1/watch")
            .header(HOST, "localhost")
            .header(ACCEPT, "application/x-ndjson")
            .body(Full::new(Bytes::new()))?;
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if status != 200 {
            let bytes = body.collect().await?.to_bytes();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            return Ok(Response { status, body });
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let event =
                    serde_json::from_slice(&line).map_err(|source| ClientError::Decode { status, source })?;
                if !on_event(event) {
                    return Ok(Response { status, body: Value::Null });
                }
            }
        }
        Ok(Response { status, body: Value::Null })
    }

    /// Connects to the socket. A full listen backlog (`EAGAIN`: a burst of
    /// connections, or a local user flooding the socket while the daemon
    /// refuses them) is waited out for a while, as a blocking `connect`
    /// would, rather than reported as the daemon being unreachable.
    async fn connect(&self) -> Result<UnixStream, ClientError> {
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && started.elapsed() < PATIENCE => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(source) => return Err(ClientError::Connect { socket: self.socket.clone(), source }),
            }
        }
    }

    /// Sends `request` on a fresh connection; the answer's body is read by
    /// the caller.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task drives the socket; it ends when `sender` is
        // dropped or the daemon closes. Its own error, if any, also reaches
        // `send_request`, which is where it is reported.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender.send_request(request).await?)
    }

    /// One request on a fresh connection: the status, whether the body is
    /// labelled JSON (or unlabelled), and the body.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<(u16, bool, Bytes), ClientError> {
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, is_json, bytes))
    }

    /// `POST /v1/creds/{role}`: issue a credential, with an optional TTL
    /// such as `"15m"`.
    pub async fn creds(&self, role: &str, ttl: Option<&str>) -> Result<Response, ClientError> {
        let body = match ttl {
            Some(ttl) => json!({ "ttl": ttl }),
            None => json!({}),
        };
        self.request(Method::POST, &format!("/v1/creds/{}", segment(role)), Some(&body)).await
    }

    /// `GET /v1/leases/{id}`: one lease's metadata.
    pub async fn lease_get(&self, lease_id: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, &lease_path(lease_id), None).await
    }

    /// `GET /v1/leases[?prefix=P]`: the first page (1 000 at most) of the
    /// caller's leases, optionally those whose id starts with `prefix`;
    /// [`Client::lease_list_all`] reads every page.
    pub async fn lease_list(&self, prefix: Option<&str>) -> Result<Response, ClientError> {
        self.lease_list_page(prefix, None, None).await
    }

    /// Every page of `GET /v1/leases`, as one answer `{"leases": […]}` (not
    /// a snapshot: a lease issued meanwhile with an id before the cursor is
    /// not seen). Stops at the first answer that is not 200, and returns it.
    pub async fn lease_list_all(&self, prefix: Option<&str>) -> Result<Response, ClientError> {
        let mut leases = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.lease_list_page(prefix, after.as_deref(), None).await?;
            if page.status != 200 {
                return Ok(page);
            }
            leases.extend(page.body["leases"].as_array().cloned().unwrap_or_default());
            match page.body["next"].as_str() {
                // A cursor that does not move would page forever.
                Some(next) if after.as_deref().is_none_or(|a| next > a) => after = Some(next.to_string()),
                Some(next) => {
                    return Err(ClientError::Protocol(format!(
                        "the lease list's next cursor {next:?} does not move forward"
                    )))
                }
                None => return Ok(Response { status: 200, body: serde_json::json!({ "leases": leases }) }),
            }
        }
    }

    /// `GET /v1/leases?prefix=P&after=A&limit=N`: one page; its `next` is
    /// the `after` of the following one (`null` after the last).
    pub async fn lease_list_page(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Response, ClientError> {
        let mut query = Vec::new();
        if let Some(prefix) = prefix {
            query.push(format!("prefix={}", segment(prefix)));
        }
        if let Some(after) = after {
            query.push(format!("after={}", segment(after)));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let path = if query.is_empty() {
            "/v1/leases".to_string()
        } else {
            format!("/v1/leases?{}", query.join("&"))
        };
        self.request(Method::GET, &path, None).await
    }

    /// `POST /v1/leases/{id}/renew`: extend a lease, by `increment` (e.g.
    /// `"1h"`) or by the role's default.
    pub async fn renew(&self, lease_id: &str, increment: Option<&str>) -> Result<Response, ClientError> {
        let body = match increment {
            Some(increment) => json!({ "increment": increment }),
            None => json!({}),
        };
        self.request(Method::POST, &format!("{}/renew", lease_path(lease_id)), Some(&body)).await
    }

    /// `DELETE /v1/leases/{id}`: revoke one lease now.
    pub async fn revoke(&self, lease_id: &str) -> Result<Response, ClientError> {
        self.request(Method::DELETE, &lease_path(lease_id), None).await
    }

    /// `POST /v1/leases/revoke`: revoke every lease whose id starts with
    /// `prefix`; `force` drops leases whose backend revocation fails.
    pub async fn revoke_prefix(&self, prefix: &str, force: bool) -> Result<Response, ClientError> {
        let body = json!({ "prefix": prefix, "force": force });
        self.request(Method::POST, "/v1/leases/revoke", Some(&body)).await
    }

    /// `POST /v1/tidy`: drop backend users no lease covers, on one
    /// connection or every one with tidy on; `dry_run` only reports them.
    pub async fn tidy(&self, connection: Option<&str>, dry_run: bool) -> Result<Response, ClientError> {
        let body = json!({ "connection": connection, "dry_run": dry_run });
        self.request(Method::POST, "/v1/tidy", Some(&body)).await
    }

    /// `POST /v1/roles/{role}/revoke-sessions`: deny every session of the
    /// role issued before now (AWS assumed_role roles; admin callers only).
    pub async fn revoke_sessions(&self, role: &str) -> Result<Response, ClientError> {
        self.request(Method::POST, &format!("/v1/roles/{}/revoke-sessions", segment(role)), None).await
    }

    /// `GET /v1/static/{name}`: a static account's current credential and
    /// where its rotation stands.
    pub async fn static_get(&self, name: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, &format!("/v1/static/{}", segment(name)), None).await
    }

    /// `POST /v1/static/{name}/rotate`: rotate a static account now; the
    /// reason is required when `overlap` is `"0s"` (an emergency).
    pub async fn static_rotate(
        &self,
        name: &str,
        reason: Option<&str>,
        overlap: Option<&str>,
    ) -> Result<Response, ClientError> {
        let body = json!({ "reason": reason, "overlap": overlap });
        self.request(Method::POST, &format!("/v1/static/{}/rotate", segment(name)), Some(&body)).await
    }

    /// `POST /v1/connections/{name}/rotate-root`: rotate the connection's
    /// own admin password.
    pub async fn rotate_root(&self, connection: &str) -> Result<Response, ClientError> {
        self.request(Method::POST, &format!("/v1/connections/{}/rotate-root", segment(connection)), None)
            .await
    }

    /// `GET /v1/health`: readiness and counts.
    pub async fn health(&self) -> Result<Response, ClientError> {
        self.request(Method::GET, "/v1/health", None).await
    }

    /// `GET /v1/plugins`: every plugin in use, built-in and external, with
    /// its version, capabilities and state (admins and `metrics` callers).
    pub async fn plugins(&self) -> Result<Response, ClientError> {
        self.request(Method::GET, "/v1/plugins", None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::extract::Query;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::routing::{any, get};
    use axum::{Json, Router};

    #[test]
    fn lease_path_encodes_the_slash() {
        assert_eq!(lease_path("app_ro/AbC123"), "/v1/leases/app_ro%2FAbC123");
        assert_eq!(lease_path("a-b_c.d~e"), "/v1/leases/a-b_c.d~e");
        assert_eq!(lease_path("x y?z#"), "/v1/leases/x%20y%3Fz%23");
    }

    #[test]
    fn connect_error_reads_well() {
        let e = ClientError::Connect {
            socket: "/tmp/x/lessor.sock".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach lessor at /tmp/x/lessor.sock: No such file or directory \
             (is `lessor serve` running? set --socket or LESSOR_SOCKET if it listens elsewhere)"
        );
        assert!(e.is_unreachable());
    }

    #[test]
    fn api_error_is_read_from_the_envelope() {
        let r = Response {
            status: 404,
            body: json!({"error": {"code": "unknown_role", "message": "no role `x`"}}),
        };
        assert_eq!(
            r.api_error(),
            Some(ApiError { code: "unknown_role".into(), message: "no role `x`".into() })
        );
        assert!(!r.is_success());
        assert_eq!(Response { status: 200, body: json!({"ok": true}) }.api_error(), None);
    }

    /// Echoes what it received, so the test sees the wire form.
    async fn echo(method: axum::http::Method, uri: Uri, headers: HeaderMap, body: String) -> Json<Value> {
        Json(json!({
            "method": method.as_str(),
            "uri": uri.to_string(),
            "host": headers.get("host").and_then(|v| v.to_str().ok()),
            "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
            "body": if body.is_empty() { Value::Null } else { serde_json::from_str::<Value>(&body).unwrap() },
        }))
    }

    async fn start() -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lessor.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let app =
            Router::new()
                .route(
                    "/v1/missing",
                    get(|| async {
                        (
                            StatusCode::NOT_FOUND,
                            Json(json!({"error": {"code": "not_found", "message": "nope"}})),
                        )
                    }),
                )
                .route("/v1/text", get(|| async { "lessor_leases_active 3\n" }))
                .route("/v1/empty", get(|| async { StatusCode::NO_CONTENT }))
                .route("/v1/bad", get(|| async { ([(CONTENT_TYPE, "application/json")], "{not json") }))
                .route(
                    "/v1/query",
                    get(|Query(q): Query<std::collections::HashMap<String, String>>| async move {
                        Json(json!(q))
                    }),
                )
                .fallback(any(echo));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (dir, Client::new(path))
    }

    #[tokio::test]
    async fn typed_calls_send_the_documented_requests() {
        let (_dir, client) = start().await;

        let r = client.creds("app_ro", Some("15m")).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body["method"], "POST");
        assert_eq!(r.body["uri"], "/v1/creds/app_ro");
        assert_eq!(r.body["host"], "localhost");
        assert_eq!(r.body["content_type"], "application/json");
        assert_eq!(r.body["body"], json!({"ttl": "15m"}));

        let r = client.renew("app_ro/abc", None).await.unwrap();
        assert_eq!(r.body["uri"], "/v1/leases/app_ro%2Fabc/renew");
        assert_eq!(r.body["body"], json!({}));

        let r = client.revoke("app_ro/abc").await.unwrap();
        assert_eq!(r.body["method"], "DELETE");
        assert_eq!(r.body["content_type"], Value::Null);
        assert_eq!(r.body["body"], Value::Null);

        let r = client.revoke_prefix("app_ro/", true).await.unwrap();
        assert_eq!(r.body["uri"], "/v1/leases/revoke");
        assert_eq!(r.body["body"], json!({"prefix": "app_ro/", "force": true}));

        let r = client.lease_list(Some("app_ro/")).await.unwrap();
        assert_eq!(r.body["uri"], "/v1/leases?prefix=app_ro%2F");
        let r = client.request(Method::GET, "/v1/query?prefix=app_ro%2F", None).await.unwrap();
        assert_eq!(r.body, json!({"prefix": "app_ro/"}));
    }

    #[tokio::test]
    async fn statuses_and_bodies_are_returned_not_raised() {
        let (_dir, client) = start().await;

        let r = client.request(Method::GET, "/v1/missing", None).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.api_error().unwrap().message, "nope");

        let r = client.request(Method::GET, "/v1/text", None).await.unwrap();
        assert_eq!(r.body, Value::String("lessor_leases_active 3\n".into()));

        let r = client.request(Method::GET, "/v1/empty", None).await.unwrap();
        assert_eq!((r.status, r.body), (204, Value::Null));

        let e = client.request(Method::GET, "/v1/bad", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Decode { status: 200, .. }), "{e}");
        assert!(!e.is_unreachable());
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("nobody.sock"));
        let e = client.health().await.unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }));
        assert!(e.to_string().contains("nobody.sock: No such file or directory"), "{e}");
    }
}
