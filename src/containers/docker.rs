//! The Docker Engine API over its Unix socket, which Docker and Podman
//! (`podman system service`) both answer: `GET /containers/ID/json` for the
//! name, image and labels, `GET /images/ID/json` for the image's digest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::policy::identity::Container;

/// The API version asked for: Docker 20.10+ and Podman 4 answer it.
const API: &str = "/v1.41";
/// The largest answer read (an inspect is a few kB).
const MAX_BODY: usize = 4 << 20;

pub struct Docker {
    socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    name: String,
    /// The image id (`sha256:…`).
    image: String,
    config: InspectConfig,
    state: InspectState,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    image: String,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    running: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageInspect {
    repo_digests: Option<Vec<String>>,
}

impl Docker {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// The container with exactly this id, while it runs; `None` when the
    /// engine does not know it or it has stopped.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, String> {
        let mut connection = self.connect().await?;
        let Some(inspect) = connection.get::<Inspect>(&format!("{API}/containers/{id}/json")).await? else {
            return Ok(None);
        };
        // An id prefix could name another container; the engine must
        // answer for this one.
        if inspect.id != id || !inspect.state.running {
            return Ok(None);
        }
        let image = connection.get::<ImageInspect>(&format!("{API}/images/{}/json", inspect.image)).await?;
        let repo = inspect.config.image.split_once('@').map_or(inspect.config.image.as_str(), |(r, _)| r);
        let repo = strip_tag(repo);
        let digests = image.and_then(|i| i.repo_digests).unwrap_or_default();
        // The manifest digest of the repository the container names, else
        // any, else the image id.
        let digest = digests
            .iter()
            .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo))
            .or(digests.first())
            .and_then(|d| d.split_once('@').map(|(_, digest)| digest.to_string()))
            .unwrap_or_else(|| inspect.image.clone());
        Ok(Some(Container {
            id: inspect.id,
            name: inspect.name.trim_start_matches('/').to_string(),
            image: inspect.config.image,
            image_digest: Some(digest),
            labels: inspect.config.labels.unwrap_or_default(),
            service_account: None,
        }))
    }

    /// One connection to the engine, its peer checked.
    async fn connect(&self) -> Result<Connection, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", self.socket.display());
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| at(&e))?;
        super::check_peer(&stream).map_err(|e| at(&e))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| at(&e))?;
        Ok(Connection { sender, driver: tokio::spawn(connection) })
    }
}

/// A connection to the engine, for the requests of one look-up.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    driver: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Connection {
    /// GETs `path`: the answer, or `None` on 404.
    async fn get<T: for<'de> Deserialize<'de>>(&mut self, path: &str) -> Result<Option<T>, String> {
        let request = Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("GET {path}: {e}"))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let body = Limited::new(response.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("GET {path}: {e}"))?
                    .to_bytes();
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| format!("GET {path}: unexpected answer: {e}"))
            }
            status => Err(format!("GET {path}: the engine answered {status}")),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// `registry:5000/app:1.4` → `registry:5000/app` (a `:` after the last
/// `/` is a tag; one before it, a port).
fn strip_tag(reference: &str) -> &str {
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].rfind(':') {
        Some(colon) => &reference[..last + colon],
        None => reference,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_tag;

    #[test]
    fn a_tag_is_stripped_a_registry_port_is_not() {
        assert_eq!(strip_tag("registry:5000/app:1.4"), "registry:5000/app");
        assert_eq!(strip_tag("registry:5000/app"), "registry:5000/app");
        assert_eq!(strip_tag("busybox"), "busybox");
        assert_eq!(strip_tag("localhost/lessor-busybox:test"), "localhost/lessor-busybox");
    }
}
