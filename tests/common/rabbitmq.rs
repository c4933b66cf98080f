//! The RabbitMQ node `scripts/test` starts once for the whole run, and the
//! example external plugin that manages its users
//! (`examples/plugins/rabbitmq`, Python over gRPC).
//!
//! Where both are comes from the environment `scripts/test` exports:
//! `LESSOR_TEST_RABBITMQ_API` (the management API's base URL),
//! `LESSOR_TEST_RABBITMQ_AMQP` (`host:port`), `LESSOR_TEST_RABBITMQ_ADMIN`
//! and `LESSOR_TEST_RABBITMQ_PASSWORD_FILE` (the node's administrator),
//! `LESSOR_TEST_RABBITMQ_PLUGIN` (the plugin's executable) and
//! `LESSOR_TEST_PYTHON_PATH` (a `PATH` whose first entry is the venv's
//! `bin`, with grpcio and pika). The test's own view of the node is the
//! management API as the administrator, over a plain HTTP/1.1 connection
//! of its own, and a real AMQP login through pika. The node is shared by
//! every test: each names its users apart, and the users a test made or
//! was issued are deleted when its `Rabbitmq` is dropped, even on panic.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::sha256_hex;
use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the RabbitMQ tests through scripts/test (or eval \"$(scripts/test --env)\")")
    })
}

/// The management API's address and the administrator's login.
#[derive(Clone)]
struct Api {
    /// `host:port`, from the base URL.
    authority: String,
    admin: String,
    password: String,
}

impl Api {
    /// One request as the administrator: the status and the JSON body
    /// (`Null` when there is none).
    async fn request(&self, method: Method, path: &str) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(&self.authority).await.unwrap_or_else(|e| {
            panic!(
                "connect to the RabbitMQ management API at {}: {e} (is scripts/test's node up?)",
                self.authority
            )
        });
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let login =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.admin, self.password));
        let request = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("/api/{path}"))
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::AUTHORIZATION, format!("Basic {login}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} /api/{path}: no answer in 20 s"))
            .unwrap_or_else(|e| panic!("{method} /api/{path}: {e}"));
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("the answer's body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// A path segment as the management API wants it: `/` (the default vhost)
/// is `%2F`.
pub fn segment(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

/// What a login over AMQP came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Logged in; `declared` says whether declaring the queue it was asked
    /// to (exclusive, gone with the connection) was allowed.
    In { declared: bool },
    /// The broker refused the login (ACCESS_REFUSED).
    Refused,
    /// Anything else (pika missing, the node down): python's stderr.
    Failed(String),
}

/// Logs in with pika, declares `RMQ_QUEUE`, and closes. Exit 3: refused.
const PIKA_LOGIN: &str = r#"
import os, sys
import pika
host, port = os.environ["RMQ_AMQP"].rsplit(":", 1)
parameters = pika.ConnectionParameters(
    host=host, port=int(port), virtual_host="/",
    credentials=pika.PlainCredentials(os.environ["RMQ_USER"], os.environ["RMQ_PASSWORD"]),
    connection_attempts=1, socket_timeout=10, stack_timeout=10, blocked_connection_timeout=10)
try:
    connection = pika.BlockingConnection(parameters)
except pika.exceptions.ProbableAuthenticationError:
    sys.exit(3)
try:
    connection.channel().queue_declare(os.environ["RMQ_QUEUE"], exclusive=True)
    print("declared")
except pika.exceptions.ChannelClosedByBroker as e:
    print(f"refused {e.reply_code}")
connection.close()
"#;

pub struct Rabbitmq {
    /// The management API's base URL, e.g. `http://127.0.0.1:55674`.
    pub api_url: String,
    /// AMQP's `host:port`.
    pub amqp: String,
    pub admin: String,
    pub password_file: PathBuf,
    /// The plugin's executable (absolute).
    pub plugin: PathBuf,
    /// `PATH` for the plugin: the venv's `bin` first.
    pub python_path: String,
    api: Api,
    /// Users to delete at the end.
    made: Mutex<Vec<String>>,
}

impl Rabbitmq {
    pub fn from_env() -> Self {
        let api_url = env("LESSOR_TEST_RABBITMQ_API");
        let password_file = PathBuf::from(env("LESSOR_TEST_RABBITMQ_PASSWORD_FILE"));
        let password = std::fs::read_to_string(&password_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", password_file.display()))
            .trim()
            .to_string();
        let authority = api_url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("LESSOR_TEST_RABBITMQ_API is not an http:// URL: {api_url}"))
            .trim_end_matches('/')
            .to_string();
        let admin = env("LESSOR_TEST_RABBITMQ_ADMIN");
        Self {
            amqp: env("LESSOR_TEST_RABBITMQ_AMQP"),
            plugin: PathBuf::from(env("LESSOR_TEST_RABBITMQ_PLUGIN")),
            python_path: env("LESSOR_TEST_PYTHON_PATH"),
            api: Api { authority, admin: admin.clone(), password },
            api_url,
            admin,
            password_file,
            made: Mutex::new(Vec::new()),
        }
    }

    /// `[plugins.rabbitmq]`, pinned to the executable's SHA-256.
    pub fn plugin_section(&self) -> String {
        format!(
            "[plugins.rabbitmq]\ncommand = {:?}\nsha256 = \"{}\"\nenv = {{ PATH = {:?} }}\n",
            self.plugin.display().to_string(),
            sha256_hex(&self.plugin),
            self.python_path,
        )
    }

    /// `[connections.NAME]` on the node, as its administrator.
    pub fn connection_section(&self, name: &str) -> String {
        format!(
            "[connections.{name}]\nplugin = \"rabbitmq\"\nurl = {:?}\npassword_file = {:?}\nusername = {:?}\namqp_url = {:?}\n",
            self.api_url,
            self.password_file.display().to_string(),
            self.admin,
            self.amqp,
        )
    }

    /// Deletes `user` when this value is dropped.
    pub fn track(&self, user: &str) {
        self.made.lock().unwrap().push(user.to_string());
    }

    /// `GET /api/users/NAME`, or `None` when there is no such user.
    pub async fn user(&self, name: &str) -> Option<Value> {
        let (status, body) = self.api.request(Method::GET, &format!("users/{}", segment(name))).await;
        match status {
            200 => Some(body),
            404 => None,
            _ => panic!("GET /api/users/{name}: {status} {body}"),
        }
    }

    /// The user's tags, whichever way the node writes them (a list since
    /// 3.9, a comma-separated string before).
    pub async fn tags(&self, name: &str) -> Vec<String> {
        let user = self.user(name).await.unwrap_or_else(|| panic!("no user {name}"));
        match &user["tags"] {
            Value::Array(tags) => tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
            Value::String(tags) => tags.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
            other => panic!("tags of {name}: {other}"),
        }
    }

    /// The user's permissions: `(vhost, configure, write, read)` each.
    pub async fn permissions(&self, name: &str) -> Vec<(String, String, String, String)> {
        let (status, body) =
            self.api.request(Method::GET, &format!("users/{}/permissions", segment(name))).await;
        assert_eq!(status, 200, "GET /api/users/{name}/permissions: {body}");
        let text = |p: &Value, k: &str| p[k].as_str().unwrap_or_default().to_string();
        body.as_array()
            .into_iter()
            .flatten()
            .map(|p| (text(p, "vhost"), text(p, "configure"), text(p, "write"), text(p, "read")))
            .collect()
    }

    /// The names of the node's users that start with `prefix`.
    pub async fn users_with_prefix(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self.api.request(Method::GET, "users?columns=name").await;
        assert_eq!(status, 200, "GET /api/users: {body}");
        body.as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// A real AMQP 0-9-1 login as `user` with the venv's pika (the
    /// password through the environment, never argv), declaring the
    /// exclusive queue `queue`.
    pub fn amqp_login(&self, user: &str, password: &str, queue: &str) -> Login {
        let bin = self.python_path.split(':').next().unwrap_or_default();
        let out = Command::new(Path::new(bin).join("python3"))
            .args(["-c", PIKA_LOGIN])
            .env("RMQ_AMQP", &self.amqp)
            .env("RMQ_USER", user)
            .env("RMQ_PASSWORD", password)
            .env("RMQ_QUEUE", queue)
            .output()
            .unwrap_or_else(|e| panic!("run {bin}/python3: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.code(), stdout.as_str()) {
            (Some(3), _) => Login::Refused,
            (Some(0), "declared") => Login::In { declared: true },
            (Some(0), s) if s.starts_with("refused") => Login::In { declared: false },
            _ => Login::Failed(format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr))),
        }
    }
}

impl Drop for Rabbitmq {
    fn drop(&mut self) {
        let users = std::mem::take(self.made.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if users.is_empty() {
            return;
        }
        let api = self.api.clone();
        // Drop cannot await, and this also runs when a test panics: a
        // thread with a runtime of its own (as TestDb's clean-up).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                for user in users {
                    api.request(Method::DELETE, &format!("users/{}", segment(&user))).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
