//! The ADS server (`envoy.service.discovery.v3.AggregatedDiscoveryService`): state of the
//! world here, incremental in [`crate::delta`].
//!
//! Per stream it follows Envoy's xDS protocol: the first request carries the node; each
//! response has a version and a nonce; a request echoing the latest nonce with that version
//! is an ACK, one with `error_detail` is a NACK (logged, counted, nothing resent until the
//! mesh changes); a request with an older nonce is stale and ignored. Empty resource names
//! subscribe to all Listeners / Clusters (wildcard); Routes and Endpoints are sent by name.
//! When the mesh changes, each stream recompiles for its node and sends only the types whose
//! resources changed.
use std::{
    collections::{BTreeMap, BTreeSet},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
            aggregated_discovery_service_server::{
                AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
            },
        },
    },
    google::protobuf::{Any, value::Kind as ValueKind},
};
use tokio::sync::{mpsc, watch};
use tonic::{
    Request, Response, Status, Streaming,
    codegen::tokio_stream::{Stream, wrappers::ReceiverStream},
};
use tracing::{debug, info, warn};

use crate::{
    compile::{self, MeshIndex, Workloads},
    delta,
    registry::Registry,
    resources::{CLUSTER, LISTENER, ResourceSet},
    secrets::SecretStore,
};

/// The mesh being served, and its version (`v1`, `v2`, ...).
pub struct Published {
    pub version: u64,
    pub mesh: MeshSource,
}

/// What a stream serves: a mesh (with the service registry) compiled per node, or (for tests
/// of clients) fixed resources.
pub enum MeshSource {
    Mesh(Arc<MeshIndex>, Arc<Registry>, Arc<SecretStore>),
    Fixed(ResourceSet),
}

impl Published {
    pub(crate) fn resources_for(&self, node: &Node) -> ResourceSet {
        match &self.mesh {
            MeshSource::Mesh(index, registry, secrets) => {
                compile::compile_with_secrets(index, registry, secrets, &workloads_of(node))
                    .resources
            }
            MeshSource::Fixed(resources) => resources.clone(),
        }
    }
}

/// The virtual nodes a node agent serves, from its metadata `virtual_nodes: ["mesh/node"]`;
/// without it, every virtual node.
pub fn workloads_of(node: &Node) -> Workloads {
    let listed = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("virtual_nodes"))
        .and_then(|v| match &v.kind {
            Some(ValueKind::ListValue(list)) => Some(list),
            _ => None,
        });
    match listed {
        Some(list) => Workloads::Only(
            list.values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(ValueKind::StringValue(s)) => {
                        s.split_once('/').map(|(m, n)| (m.to_owned(), n.to_owned()))
                    }
                    _ => None,
                })
                .collect(),
        ),
        None => Workloads::All,
    }
}

/// Counters for operators and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub streams: AtomicU64,
    pub responses: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
}

/// The control plane's publishing side and the gRPC service.
#[derive(Clone)]
pub struct AdsServer {
    published: watch::Receiver<Arc<Published>>,
    stats: Arc<Stats>,
}

/// Publishes new meshes to every stream.
pub struct Publisher {
    sender: watch::Sender<Arc<Published>>,
    next_version: u64,
}

impl Publisher {
    pub fn publish(&mut self, mesh: MeshSource) {
        self.next_version += 1;
        let version = self.next_version;
        self.sender
            .send_replace(Arc::new(Published { version, mesh }));
        info!(version, "mesh published");
    }
}

impl AdsServer {
    pub fn new(initial: MeshSource) -> (Self, Publisher) {
        let (sender, published) = watch::channel(Arc::new(Published {
            version: 1,
            mesh: initial,
        }));
        (
            Self {
                published,
                stats: Arc::default(),
            },
            Publisher {
                sender,
                next_version: 1,
            },
        )
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
            // Large meshes compile to large responses (10k services).
            .max_encoding_message_size(256 * 1024 * 1024)
            .max_decoding_message_size(16 * 1024 * 1024)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let requests = request.into_inner();
        let (published, stats) = (self.published.clone(), Arc::clone(&self.stats));
        let output = self.spawn_session("state of the world", |sender| {
            StreamState::new(published, stats, sender).run(requests)
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let requests = request.into_inner();
        let (published, stats) = (self.published.clone(), Arc::clone(&self.stats));
        let output = self.spawn_session("delta", |sender| {
            delta::DeltaSession::new(published, stats, sender).run(requests)
        });
        Ok(Response::new(Box::pin(output)))
    }
}

impl AdsServer {
    /// Runs one stream's session on a task of its own; its responses flow out through a
    /// channel that becomes the gRPC response stream.
    fn spawn_session<R, F>(
        &self,
        kind: &'static str,
        session: impl FnOnce(mpsc::Sender<Result<R, Status>>) -> F,
    ) -> ReceiverStream<Result<R, Status>>
    where
        R: Send + 'static,
        F: Future<Output = Result<(), Status>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(16);
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        let session = session(sender);
        tokio::spawn(async move {
            if let Err(status) = session.await {
                debug!(kind, %status, "ADS stream ended");
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// What one type's subscription has seen.
#[derive(Default)]
struct Subscription {
    /// None: wildcard.
    names: Option<BTreeSet<String>>,
    /// The last response: its nonce, version and a digest of its resources (a digest rather
    /// than a copy: with thousands of resources per node, copies per stream add up).
    nonce: String,
    version: String,
    sent: Option<u64>,
}

fn digest(resources: &BTreeMap<String, Any>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, any) in resources {
        name.hash(&mut hasher);
        any.type_url.hash(&mut hasher);
        any.value.hash(&mut hasher);
    }
    hasher.finish()
}

/// What a stream (state of the world or delta) serves its node: the published mesh compiled
/// for that node, recompiled as the mesh changes.
pub(crate) struct NodeView {
    published: watch::Receiver<Arc<Published>>,
    node: Option<Node>,
    /// The mesh version and the resources compiled from it for the node.
    pub(crate) current: (u64, ResourceSet),
}

impl NodeView {
    pub(crate) fn new(published: watch::Receiver<Arc<Published>>) -> Self {
        Self {
            published,
            node: None,
            current: (0, ResourceSet::default()),
        }
    }

    /// Takes the node from the stream's first request (`request_kind` names it in the error).
    pub(crate) fn identify(
        &mut self,
        node: Option<&Node>,
        request_kind: &str,
    ) -> Result<(), Status> {
        if self.node.is_some() {
            return Ok(());
        }
        let Some(node) = node else {
            return Err(Status::invalid_argument(format!(
                "the first {request_kind} must carry the node"
            )));
        };
        info!(node = %node.id, cluster = %node.cluster, request_kind, "node connected");
        self.node = Some(node.clone());
        self.recompile();
        Ok(())
    }

    /// Waits for the next published mesh and recompiles for the node; false when no node has
    /// identified itself yet (nothing to send).
    pub(crate) async fn changed(&mut self) -> Result<bool, Status> {
        self.published
            .changed()
            .await
            .map_err(|_| Status::unavailable("control plane shutting down"))?;
        if self.node.is_none() {
            return Ok(false);
        }
        self.recompile();
        Ok(true)
    }

    pub(crate) fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.id.as_str())
    }

    fn recompile(&mut self) {
        let published = Arc::clone(&self.published.borrow_and_update());
        if let Some(node) = &self.node {
            self.current = (published.version, published.resources_for(node));
        }
    }
}

struct StreamState {
    view: NodeView,
    stats: Arc<Stats>,
    sender: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
}

impl StreamState {
    fn new(
        published: watch::Receiver<Arc<Published>>,
        stats: Arc<Stats>,
        sender: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            view: NodeView::new(published),
            stats,
            sender,
            subscriptions: BTreeMap::new(),
            nonce: 0,
        }
    }

    async fn run(mut self, mut requests: Streaming<DiscoveryRequest>) -> Result<(), Status> {
        loop {
            tokio::select! {
                request = requests.message() => match request? {
                    Some(request) => self.on_request(request).await?,
                    None => return Ok(()),
                },
                changed = self.view.changed() => {
                    if changed? {
                        self.push_changes().await?;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, request: DiscoveryRequest) -> Result<(), Status> {
        self.view
            .identify(request.node.as_ref(), "DiscoveryRequest")?;
        let node = self.view.node_id().to_owned();
        let type_url = request.type_url.clone();
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != subscription.nonce {
            debug!(%node, %type_url, nonce = %request.response_nonce, "stale request ignored");
            return Ok(());
        }
        if let Some(error) = &request.error_detail {
            self.stats.nacks.fetch_add(1, Ordering::Relaxed);
            warn!(%node, %type_url, rejected = %subscription.version, kept = %request.version_info, error = %error.message, "NACK");
            return Ok(());
        }
        let wildcard =
            request.resource_names.is_empty() && (type_url == LISTENER || type_url == CLUSTER);
        let names = (!wildcard).then(|| {
            request
                .resource_names
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
        });
        let resubscribed = subscription.names != names || subscription.sent.is_none();
        subscription.names = names;
        if !request.response_nonce.is_empty() && request.version_info == subscription.version {
            self.stats.acks.fetch_add(1, Ordering::Relaxed);
            debug!(%node, %type_url, version = %request.version_info, "ACK");
        }
        if resubscribed {
            self.send(&type_url).await?;
        }
        Ok(())
    }

    /// After a mesh change: every subscribed type whose resources differ is sent again.
    async fn push_changes(&mut self) -> Result<(), Status> {
        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
        for type_url in types {
            let selected = digest(&self.selected(&type_url));
            if self.subscriptions.get(&type_url).and_then(|s| s.sent) != Some(selected) {
                self.send(&type_url).await?;
            }
        }
        Ok(())
    }

    fn selected(&self, type_url: &str) -> BTreeMap<String, Any> {
        let names = self
            .subscriptions
            .get(type_url)
            .and_then(|s| s.names.as_ref());
        self.view
            .current
            .1
            .of_type(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| names.is_none_or(|n| n.contains(*name)))
            .map(|(name, any)| (name.clone(), any.clone()))
            .collect()
    }

    async fn send(&mut self, type_url: &str) -> Result<(), Status> {
        let selected = self.selected(type_url);
        self.nonce += 1;
        let version = format!("v{}", self.view.current.0);
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: selected.values().cloned().collect(),
            type_url: type_url.to_owned(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        let subscription = self.subscriptions.entry(type_url.to_owned()).or_default();
        subscription.nonce = self.nonce.to_string();
        subscription.version = version;
        subscription.sent = Some(digest(&selected));
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        self.sender
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("client went away"))
    }
}
