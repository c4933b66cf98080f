//! OpenBao's HTTP API as the phase speaks it: one keep-alive HTTP/1.1
//! connection per client over plain TCP, the root token in
//! `X-Vault-Token`, JSON both ways.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::net::TcpStream;

/// Bound on one HTTP exchange, so a stuck server cannot hold a load task
/// past the end of its run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One keep-alive HTTP/1.1 connection to the server, opened on first use
/// and again after it closes.
pub struct Http {
    addr: SocketAddr,
    token: Option<SecretString>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Http {
    pub fn new(addr: SocketAddr, token: Option<SecretString>) -> Self {
        Self { addr, token, sender: None }
    }

    /// Another client with the same token and a connection of its own.
    pub fn fresh(&self) -> Self {
        Self::new(self.addr, self.token.clone())
    }

    /// One request; the status and the body as JSON (`Null` when empty).
    /// An error is not getting an answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<(u16, Value), String> {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await;
        outcome.unwrap_or_else(|_| {
            self.sender = None;
            Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
        })
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::result::Result<(u16, Value), String> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream =
                TcpStream::connect(self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("http: {e}"))?;
            // Ends when `sender` is dropped or the server closes; an error
            // also reaches `send_request`, which reports it.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        let mut request = Request::builder().method(method).uri(path).header(HOST, self.addr.to_string());
        if let Some(token) = &self.token {
            request = request.header("X-Vault-Token", token.expose_secret());
        }
        let body = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| format!("request: {e}"))?;
        let sender = self.sender.as_mut().expect("connected above");
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(format!("http: {e}"));
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                self.sender = None;
                return Err(format!("http body: {e}"));
            }
        };
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, value))
    }
}
