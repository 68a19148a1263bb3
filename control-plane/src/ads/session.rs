//! One ADS stream, whichever protocol it speaks: the node's view of the published mesh
//! (compiled for it, recompiled as the mesh changes), its subscriptions by type, the nonces it
//! was sent; and the loop that hands requests and mesh changes to the protocol.
use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
};

use envoy_types::pb::{envoy::config::core::v3::Node, google::protobuf::Any};
use mesh_xds::resources::{CLUSTER, LISTENER, ResourceSet};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{info, warn};

use super::{Published, Stats};
use crate::caller::Caller;

/// A protocol over a [`Session`]: state of the world or delta.
pub(super) trait Protocol: Sized + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// What the stream knows of one type's subscription.
    type Subscription: Default + Send;
    /// The protocol's name, for logs.
    const NAME: &'static str;
    /// The request message's name, for errors.
    const REQUEST: &'static str;

    fn node(request: &Self::Request) -> Option<&Node>;

    /// A request, from a node that has identified itself.
    fn on_request(
        session: &mut Session<Self>,
        request: Self::Request,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// The mesh changed and the view was recompiled: send what changed for the node.
    fn on_change(session: &mut Session<Self>) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Whether a first request for `type_url` naming nothing subscribes to everything: the
/// legacy wildcard, for Listeners and Clusters only (Routes and Endpoints go by name).
pub(super) fn wildcard_by_default(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

pub(super) struct Session<P: Protocol> {
    published: watch::Receiver<Arc<Published>>,
    /// Who connected, as the TLS handshake proved it.
    caller: Caller,
    node: Option<Node>,
    /// The mesh version and the resources compiled from it for the node (shared with the
    /// streams of nodes that get the same).
    current: (u64, Arc<ResourceSet>),
    stats: Arc<Stats>,
    sender: mpsc::Sender<Result<P::Response, Status>>,
    pub(super) subscriptions: BTreeMap<String, P::Subscription>,
    nonce: u64,
}

impl<P: Protocol> Session<P> {
    pub(super) fn new(
        published: watch::Receiver<Arc<Published>>,
        caller: Caller,
        stats: Arc<Stats>,
        sender: mpsc::Sender<Result<P::Response, Status>>,
    ) -> Self {
        Self {
            published,
            caller,
            node: None,
            current: (0, Arc::default()),
            stats,
            sender,
            subscriptions: BTreeMap::new(),
            nonce: 0,
        }
    }

    pub(super) async fn run(mut self, mut requests: Streaming<P::Request>) -> Result<(), Status> {
        loop {
            tokio::select! {
                request = requests.message() => match request? {
                    Some(request) => {
                        self.identify(P::node(&request)).await?;
                        P::on_request(&mut self, request).await?;
                    }
                    None => return Ok(()),
                },
                changed = self.changed() => {
                    changed?;
                    // Nothing to send before the node has identified itself.
                    if self.node.is_some() {
                        self.recompile().await?;
                        P::on_change(&mut self).await?;
                    }
                }
            }
        }
    }

    /// Takes the node from the stream's first request.
    async fn identify(&mut self, node: Option<&Node>) -> Result<(), Status> {
        if self.node.is_some() {
            return Ok(());
        }
        let Some(node) = node else {
            return Err(Status::invalid_argument(format!(
                "the first {} must carry the node",
                P::REQUEST
            )));
        };
        if let Err(refused) = self.caller.admit(&node.id) {
            warn!(node = %node.id, reason = refused.message(), "ADS stream refused");
            return Err(refused);
        }
        info!(node = %node.id, cluster = %node.cluster, request_kind = P::REQUEST, "node connected");
        self.node = Some(node.clone());
        self.recompile().await
    }

    /// Waits for the next published mesh. Only waits (a branch of the loop's `select!` that
    /// may be dropped for a request): the recompile follows in the branch's body, which runs
    /// to its end.
    async fn changed(&mut self) -> Result<(), Status> {
        self.published
            .changed()
            .await
            .map_err(|_| Status::unavailable("control plane shutting down"))
    }

    /// Compiles the published mesh for the node (or takes the copy of its view), on a
    /// blocking thread: a large mesh takes tens of milliseconds, which the runtime's threads
    /// serving every other stream must not wait for.
    async fn recompile(&mut self) -> Result<(), Status> {
        let published = Arc::clone(&self.published.borrow_and_update());
        let Some(node) = self.node.clone() else {
            return Ok(());
        };
        let version = published.version;
        let resources = tokio::task::spawn_blocking(move || published.resources_for(&node))
            .await
            .map_err(|error| {
                Status::internal(format!("compiling the mesh for the node failed: {error}"))
            })?;
        self.current = (version, resources);
        Ok(())
    }

    pub(super) fn node_id(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.id.as_str())
    }

    /// The version of the mesh the node's resources were compiled from, as responses carry it.
    pub(super) fn version(&self) -> String {
        format!("v{}", self.current.0)
    }

    /// The node's resources of one type.
    pub(super) fn resources(&self, type_url: &str) -> impl Iterator<Item = (&String, &Any)> {
        self.current.1.of_type(type_url).into_iter().flatten()
    }

    /// The node's resources of `type_url`, shared (empty when it has none).
    pub(super) fn resources_shared(&self, type_url: &str) -> Arc<BTreeMap<String, Any>> {
        self.current
            .1
            .by_type
            .get(type_url)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A fresh nonce for the next response.
    pub(super) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    pub(super) async fn respond(&mut self, response: P::Response) -> Result<(), Status> {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        self.sender
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("client went away"))
    }
}
