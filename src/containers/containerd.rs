//! containerd's gRPC API over its Unix socket, in the namespace the
//! config names (`k8s.io` for the kubelet's containers):
//! `Containers/Get` for the labels and image, `Tasks/Get` for whether it
//! runs. The image's digest is given only when the container was made from
//! a reference by digest (`repo@sha256:…`): the image store would say what
//! a tag points to now, not then. Only the fields lessor reads
//! are declared; prost skips the rest.

use std::collections::HashMap;
use std::path::PathBuf;

use hyper::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tonic_prost::ProstCodec;

use crate::policy::identity::Container;

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerRequest {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    container: Option<ContainerRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(map = "string, string", tag = "2")]
    labels: HashMap<String, String>,
    #[prost(string, tag = "3")]
    image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetTaskRequest {
    #[prost(string, tag = "1")]
    container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetTaskResponse {
    #[prost(message, optional, tag = "1")]
    process: Option<Process>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Process {
    /// containerd.v1.types.Status: 2 is RUNNING.
    #[prost(int32, tag = "4")]
    status: i32,
}

const RUNNING: i32 = 2;

pub struct Containerd {
    /// Connected on first use and again after containerd restarts, each
    /// connection's peer checked.
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Within the runtime: the channel's worker is spawned on it.
    pub fn new(socket: PathBuf, namespace: String) -> Self {
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                super::check_peer(&stream)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = Endpoint::from_static("http://containerd").connect_with_connector_lazy(connector);
        Self { channel, namespace }
    }

    /// The container with exactly this id, while its task runs; `None`
    /// when containerd does not know it (in this namespace) or it has
    /// stopped. containerd names containers by id only: the id is its name.
    pub async fn inspect(&self, id: &str) -> Result<Option<Container>, String> {
        let channel = &self.channel;
        let got: Option<GetContainerResponse> = self
            .call(
                channel,
                "/containerd.services.containers.v1.Containers/Get",
                GetContainerRequest { id: id.to_string() },
            )
            .await?;
        let Some(record) = got.and_then(|r| r.container).filter(|c| c.id == id) else { return Ok(None) };
        let task: Option<GetTaskResponse> = self
            .call(
                channel,
                "/containerd.services.tasks.v1.Tasks/Get",
                GetTaskRequest { container_id: id.to_string() },
            )
            .await?;
        if task.and_then(|t| t.process).is_none_or(|p| p.status != RUNNING) {
            return Ok(None);
        }
        // Only a reference by digest says what the container was made
        // from: a tag may point elsewhere by now.
        let digest = record.image.split_once('@').map(|(_, digest)| digest.to_string());
        Ok(Some(Container {
            id: record.id.clone(),
            name: record.id,
            image: record.image,
            image_digest: digest,
            labels: record.labels.into_iter().collect(),
            service_account: None,
        }))
    }

    /// A unary call in the namespace: the answer, or `None` on NotFound.
    async fn call<Q, A>(&self, channel: &Channel, path: &'static str, request: Q) -> Result<Option<A>, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.map_err(|e| format!("{path}: {e}"))?;
        let mut request = Request::new(request);
        let namespace = self
            .namespace
            .parse()
            .map_err(|_| format!("namespace {:?} is not a header value", self.namespace))?;
        request.metadata_mut().insert("containerd-namespace", namespace);
        let codec: ProstCodec<Q, A> = ProstCodec::default();
        match grpc.unary(request, PathAndQuery::from_static(path), codec).await {
            Ok(answer) => Ok(Some(answer.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(format!("{path}: {} ({:?})", status.message(), status.code())),
        }
    }
}
