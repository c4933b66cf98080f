//! moto helpers shared by two test crates: the daemon's integration tests
//! (through `tests/common/aws.rs`) and the AWS plugin's own
//! (`plugins/aws/tests/plugin.rs`, by `#[path]`). The shared moto server
//! (`LESSOR_TEST_AWS_ENDPOINT`, exported by `scripts/test`) keeps its
//! authentication off, so any key works there; a test that must prove a
//! key works, or is refused, starts its own [`Moto`] and turns it on.
//! Each crate uses part of this file.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::error::ProvideErrorMetadata;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The key the tests use while moto's authentication is off (any works).
pub const ANY_KEY: (&str, &str) = ("AKIAIOSFODNN7EXAMPLE", "lessor-test-admin-secret-0000");

/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

pub fn aws_endpoint() -> String {
    std::env::var("LESSOR_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

pub fn aws_region() -> String {
    std::env::var("LESSOR_TEST_AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// A moto server of the test's own, on a free loopback port, stopped when
/// dropped. Uses `LESSOR_TEST_MOTO_SERVER` (set by `scripts/test`) or the
/// venv `scripts/test` makes.
pub struct Moto {
    pub endpoint: String,
    child: Child,
    /// The file a recording moto writes requests to.
    recording: Option<PathBuf>,
}

impl Moto {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A private moto that records every request it is sent, from now on:
    /// what a client sent, read back with [`recorded`](Self::recorded).
    pub async fn start_recording() -> Self {
        // The recording goes to a file of its own, not moto's working folder.
        let file = std::env::temp_dir().join(format!("lessor-moto-recording-{}", std::process::id()));
        let file = file.display().to_string();
        let moto =
            Self::start_with(&[("MOTO_ENABLE_RECORDING", "True"), ("MOTO_RECORDER_FILEPATH", &file)]).await;
        let (status, body) = http(&moto.endpoint, "POST", "/moto-api/recorder/start-recording", None)
            .await
            .expect("start-recording");
        assert_eq!(status, 200, "start-recording: {body}");
        moto
    }

    /// The recorded requests: one JSON object per line, with the form body
    /// base64-encoded when `body_encoded`.
    pub async fn recorded(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(&self.endpoint, "GET", "/moto-api/recorder/download-recording", None)
            .await
            .expect("download");
        assert_eq!(status, 200, "download-recording: {body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    async fn start_with(env: &[(&str, &str)]) -> Self {
        let program = std::env::var_os("LESSOR_TEST_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/lessor-venv/bin/moto_server"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (run scripts/test to install it): {e}", program.display()));
        let recording =
            env.iter().find(|(k, _)| *k == "MOTO_RECORDER_FILEPATH").map(|(_, v)| PathBuf::from(v));
        let mut moto = Self { endpoint: format!("http://127.0.0.1:{port}"), child, recording };
        // Polled until it answers, up to a deadline, failing early if it died.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http(&moto.endpoint, "GET", "/moto-api/", None).await, Ok((200, _))) {
                return moto;
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("the private moto server exited: {status}");
            }
            assert!(tokio::time::Instant::now() < deadline, "the private moto server did not answer in 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// From now on every request must be signed with a key moto knows
    /// (`POST /moto-api/reset-auth` with `0` actions left unauthenticated).
    pub async fn enable_auth(&self) {
        let (status, body) =
            http(&self.endpoint, "POST", "/moto-api/reset-auth", Some(("text/plain", "0"))).await.unwrap();
        assert_eq!(status, 200, "reset-auth: {body}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(file) = &self.recording {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A minimal HTTP/1.1 request to moto's own API; returns status and body.
pub async fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> std::io::Result<(u16, String)> {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some((content_type, text)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        ));
    } else {
        request.push_str("Content-Length: 0\r\n\r\n");
    }
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// An SDK config for `endpoint` signing with the given key.
pub async fn sdk(endpoint: &str, key: (&str, &str), session_token: Option<&str>) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(aws_region()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key.0, key.1, session_token.map(str::to_string), None, "test"))
        .load()
        .await
}

pub async fn iam(endpoint: &str, key: (&str, &str)) -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&sdk(endpoint, key, None).await)
}

/// GetCallerIdentity with a key: `Ok(arn)`, or the raw HTTP status and
/// body of the refusal (moto's authentication errors use a layout the SDK
/// cannot parse, so its error has no code: the raw answer is the truth).
pub async fn caller_identity(
    endpoint: &str,
    key: (&str, &str),
    session_token: Option<&str>,
) -> Result<String, (u16, String)> {
    let sts = aws_sdk_sts::Client::new(&sdk(endpoint, key, session_token).await);
    match sts.get_caller_identity().send().await {
        Ok(identity) => Ok(identity.arn().unwrap_or_default().to_string()),
        Err(e) => {
            let raw = e.raw_response().map(|r| {
                (
                    r.status().as_u16(),
                    String::from_utf8_lossy(r.body().bytes().unwrap_or_default()).into_owned(),
                )
            });
            Err(raw.unwrap_or_else(|| (0, format!("no answer: {e:?}"))))
        }
    }
}

/// Proves a key issued on a moto with authentication on: GetCallerIdentity
/// with it answers exactly `expected_arn`, and the same call is refused
/// with the key id and a secret one character off (SignatureDoesNotMatch)
/// and, for a key with a session token, without the token or with one a
/// character off (InvalidClientTokenId: moto compares the whole token).
/// Failure messages show moto's answers and the ARNs, never the key.
pub async fn assert_works_only_as_issued(
    endpoint: &str,
    key: (&str, &str),
    session_token: Option<&str>,
    expected_arn: &str,
) {
    let who =
        caller_identity(endpoint, key, session_token).await.expect("GetCallerIdentity with the issued key");
    assert_eq!(who, expected_arn, "the issued key belongs to another identity");
    let refused = caller_identity(endpoint, (key.0, &altered(key.1)), session_token)
        .await
        .expect_err("the issued key id with a wrong secret was accepted");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("SignatureDoesNotMatch"), "{refused:?}");
    if let Some(token) = session_token {
        let refused = caller_identity(endpoint, key, None)
            .await
            .expect_err("the issued key was accepted without its session token");
        assert_eq!(refused.0, 403, "{refused:?}");
        assert!(refused.1.contains("InvalidClientTokenId"), "{refused:?}");
        let refused = caller_identity(endpoint, key, Some(&altered(token)))
            .await
            .expect_err("the issued key was accepted with a wrong session token");
        assert_eq!(refused.0, 403, "{refused:?}");
        assert!(refused.1.contains("InvalidClientTokenId"), "{refused:?}");
    }
}

/// `text` with its last character changed: a near miss, not another string.
pub fn altered(text: &str) -> String {
    let mut out = text.to_string();
    let last = out.pop().expect("an empty secret");
    out.push(if last == 'A' { 'B' } else { 'A' });
    out
}

/// The session name lessor gives a lease's STS session by default:
/// `lessor-{lease_id}` with `/` made `-`, cut to its last `max_len`
/// characters (64 for AssumeRole, 32 for GetFederationToken's user name).
pub fn default_session_name(lease_id: &str, max_len: usize) -> String {
    let name = format!("lessor-{}", lease_id.replace('/', "-"));
    name[name.len().saturating_sub(max_len)..].to_string()
}

/// A GetFederationToken (`Some(name)`) or GetSessionToken (`None`) made
/// directly with `key`: the credential moto's STS hands out for it.
pub async fn sts_token(
    endpoint: &str,
    key: (&str, &str),
    federation_name: Option<&str>,
) -> (String, String, String) {
    let sts = aws_sdk_sts::Client::new(&sdk(endpoint, key, None).await);
    let credentials = match federation_name {
        Some(name) => sts
            .get_federation_token()
            .name(name)
            .duration_seconds(900)
            .send()
            .await
            .map(|o| o.credentials)
            .map_err(|e| aws_sdk_sts::error::DisplayErrorContext(e).to_string()),
        None => sts
            .get_session_token()
            .duration_seconds(900)
            .send()
            .await
            .map(|o| o.credentials)
            .map_err(|e| aws_sdk_sts::error::DisplayErrorContext(e).to_string()),
    }
    .unwrap_or_else(|e| panic!("GetFederationToken/GetSessionToken: {e}"))
    .expect("credentials in the answer");
    (
        credentials.access_key_id().to_string(),
        credentials.secret_access_key().to_string(),
        credentials.session_token().to_string(),
    )
}

/// What moto cannot check of a federation or session token, and what it
/// can. moto 5 answers every GetFederationToken and GetSessionToken with
/// one fixed example credential that it registers nowhere: with
/// authentication on it refuses that key whatever the secret or token
/// (InvalidClientTokenId), so GetCallerIdentity never shows the federated
/// user or the IAM user behind a session token (on AWS: `on_aws`), and a
/// wrong secret cannot be told from a right one. Checked instead: the
/// credential lessor handed out is, key, secret and token, the one moto's
/// STS issues to lessor's admin (`admin`) for the same call made here, and
/// moto's refusal of it is that one. Should a moto release start
/// registering these keys, this fails: prove them with
/// [`assert_works_only_as_issued`] and `on_aws` then.
pub async fn assert_moto_cannot_check(
    endpoint: &str,
    admin: (&str, &str),
    federation_name: Option<&str>,
    issued: (&str, &str, Option<&str>),
    on_aws: &str,
) {
    let (id, secret, token) = sts_token(endpoint, admin, federation_name).await;
    assert!(
        issued.0 == id && issued.1 == secret && issued.2 == Some(token.as_str()),
        "the issued credential is not the one moto's STS issues for this call"
    );
    match caller_identity(endpoint, (issued.0, issued.1), issued.2).await {
        Err(refused) => {
            assert_eq!(refused.0, 403, "{refused:?}");
            assert!(refused.1.contains("InvalidClientTokenId"), "{refused:?}");
        }
        Ok(arn) => panic!(
            "moto now accepts its federation/session tokens (GetCallerIdentity: {arn}): \
             assert_works_only_as_issued with {on_aws} instead"
        ),
    }
}

pub async fn user_exists(iam: &aws_sdk_iam::Client, name: &str) -> bool {
    match iam.get_user().user_name(name).send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("NoSuchEntity") => false,
        Err(e) => panic!("GetUser {name}: {e:?}"),
    }
}

/// An IAM user with an allow-everything inline policy and an access key,
/// to be lessor's admin on a moto server with authentication on.
pub async fn make_admin(iam: &aws_sdk_iam::Client, name: &str) -> (String, String) {
    iam.create_user().user_name(name).send().await.expect("CreateUser admin");
    iam.put_user_policy()
        .user_name(name)
        .policy_name("all")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .expect("PutUserPolicy admin");
    let key = iam.create_access_key().user_name(name).send().await.expect("CreateAccessKey admin");
    let key = key.access_key().unwrap();
    (key.access_key_id().to_string(), key.secret_access_key().to_string())
}
