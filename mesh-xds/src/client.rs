//! An ADS client (state of the world) for the node agent, usable against any conforming xDS
//! server: it subscribes to Clusters and Listeners (wildcard), then to the Endpoints and
//! Routes they name; decodes and checks every resource; ACKs a response it accepts and NACKs
//! one it does not (naming each bad resource), keeping the last good state; publishes each
//! accepted state atomically; reconnects with jittered exponential backoff.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType},
            core::v3::Node,
            listener::v3::{Listener, filter::ConfigType},
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
        service::discovery::v3::{
            DiscoveryRequest, DiscoveryResponse,
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        },
    },
    google::{
        protobuf::{Any, ListValue, Struct, Value, value::Kind},
        rpc,
    },
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    channel::{self, ChannelError, ControlPlaneTls},
    plan::{Planned, ResourceError},
    resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, SECRET},
    sds,
};

/// The accepted configuration: resources by type and the version of each type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdsState {
    pub versions: BTreeMap<String, String>,
    pub resources: ResourceSet,
    /// The ADS stream is open.
    pub connected: bool,
    /// Responses rejected, by resource type URL.
    pub nacks: BTreeMap<String, u64>,
    /// When a response was last accepted.
    pub last_update: Option<std::time::SystemTime>,
}

impl XdsState {
    /// Per type (short name): its version and resource names, as JSON.
    pub fn summary(&self) -> serde_json::Value {
        let types: serde_json::Map<String, serde_json::Value> = self
            .resources
            .by_type
            .iter()
            .map(|(type_url, resources)| {
                let short = type_url.rsplit('.').next().unwrap_or(type_url);
                (
                    short.to_owned(),
                    serde_json::json!({
                        "version": self.versions.get(type_url),
                        "names": resources.keys().collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(types)
    }

    /// Every subscribed type has been accepted at least once.
    pub fn is_synced(&self) -> bool {
        let needs = |t: &str| match t {
            ROUTE => !route_names(&self.resources).is_empty(),
            ENDPOINT => !endpoint_names(&self.resources).is_empty(),
            _ => true,
        };
        [CLUSTER, LISTENER, ROUTE, ENDPOINT]
            .iter()
            .all(|t| !needs(t) || self.versions.contains_key(*t))
    }
}

pub struct Settings {
    /// `http://host:port` or `https://host:port` of the ADS server.
    pub endpoint: String,
    /// TLS toward it (with `https://`).
    pub tls: Option<ControlPlaneTls>,
    pub node: Node,
}

/// The node an agent presents: its id, and the virtual nodes it serves as metadata.
pub fn node(id: &str, virtual_nodes: &[String]) -> Node {
    let metadata = (!virtual_nodes.is_empty()).then(|| Struct {
        fields: [(
            "virtual_nodes".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: virtual_nodes
                        .iter()
                        .map(|v| Value {
                            kind: Some(Kind::StringValue(v.clone())),
                        })
                        .collect(),
                })),
            },
        )]
        .into(),
    });
    Node {
        id: id.to_owned(),
        cluster: "mesh-agent".into(),
        metadata,
        ..Default::default()
    }
}

/// Runs until `stop`; each accepted state is published on `state`.
pub async fn run(settings: Settings, state: watch::Sender<Arc<XdsState>>, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let session = session(&settings, &state);
        tokio::select! {
            result = session => match result {
                Ok(()) => info!(endpoint = %settings.endpoint, "ADS stream closed by the server; reconnecting"),
                Err(error) => warn!(endpoint = %settings.endpoint, %error, "ADS stream failed; reconnecting"),
            },
            () = stop.cancelled() => return,
        }
        let wait = backoff.next();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Exponential backoff 250 ms .. 30 s with full jitter, so restarted control planes are not
/// hit by every node at once.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = (250u64 << self.attempt.min(7)).min(30_000);
        self.attempt += 1;
        Duration::from_millis(rand::random_range(ceiling / 2..=ceiling))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connect: {0}")]
    Connect(#[from] ChannelError),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("request channel closed")]
    Closed,
}

async fn session(
    settings: &Settings,
    state: &watch::Sender<Arc<XdsState>>,
) -> Result<(), SessionError> {
    let channel = channel::connect(&settings.endpoint, settings.tls.as_ref(), None).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (requests, receiver) = mpsc::channel(16);
    let mut subscriptions = Subscriptions::default();
    // Resume from the last good state: known versions, and the names it needs.
    let current = Arc::clone(&state.borrow());
    let mut first = true;
    for (type_url, names) in [
        (CLUSTER, Vec::new()),
        (LISTENER, Vec::new()),
        (ENDPOINT, endpoint_names(&current.resources)),
        (ROUTE, route_names(&current.resources)),
        (SECRET, secret_names(&current.resources)),
    ] {
        if matches!(type_url, ENDPOINT | ROUTE | SECRET) && names.is_empty() {
            continue;
        }
        subscriptions
            .names
            .insert(type_url.to_owned(), names.clone());
        let request = DiscoveryRequest {
            node: first.then(|| settings.node.clone()),
            type_url: type_url.to_owned(),
            resource_names: names,
            version_info: current.versions.get(type_url).cloned().unwrap_or_default(),
            ..Default::default()
        };
        first = false;
        requests
            .send(request)
            .await
            .map_err(|_| SessionError::Closed)?;
    }
    let stream = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut responses = client
        .stream_aggregated_resources(stream)
        .await?
        .into_inner();
    info!(endpoint = %settings.endpoint, node = %settings.node.id, "ADS stream open");
    set_connected(state, true);
    let result = async {
        while let Some(response) = responses.message().await? {
            for request in on_response(response, state, &mut subscriptions) {
                requests
                    .send(request)
                    .await
                    .map_err(|_| SessionError::Closed)?;
            }
        }
        Ok(())
    }
    .await;
    set_connected(state, false);
    result
}

#[derive(Default)]
struct Subscriptions {
    names: BTreeMap<String, Vec<String>>,
}

fn set_connected(state: &watch::Sender<Arc<XdsState>>, connected: bool) {
    state.send_if_modified(|current| {
        let changed = current.connected != connected;
        Arc::make_mut(current).connected = connected;
        changed
    });
}

/// Handles one response: the ACK or NACK, and new subscriptions it makes necessary.
fn on_response(
    response: DiscoveryResponse,
    state: &watch::Sender<Arc<XdsState>>,
    subscriptions: &mut Subscriptions,
) -> Vec<DiscoveryRequest> {
    let type_url = response.type_url.clone();
    let current = Arc::clone(&state.borrow());
    let names = subscriptions
        .names
        .get(&type_url)
        .cloned()
        .unwrap_or_default();
    let reply = |version: String, error: Option<String>| DiscoveryRequest {
        version_info: version,
        response_nonce: response.nonce.clone(),
        type_url: type_url.clone(),
        resource_names: names.clone(),
        error_detail: error.map(|message| rpc::Status {
            code: tonic::Code::InvalidArgument as i32,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    };
    let accepted = match check_response(&response) {
        Ok(accepted) => accepted,
        Err(errors) => {
            let kept = current.versions.get(&type_url).cloned().unwrap_or_default();
            let message = errors.join("; ");
            warn!(%type_url, rejected = %response.version_info, %kept, error = %message, "NACK: keeping the last good configuration");
            state.send_modify(|current| {
                *Arc::make_mut(current)
                    .nacks
                    .entry(type_url.clone())
                    .or_default() += 1;
            });
            return vec![reply(kept, Some(message))];
        }
    };
    let mut next = (*current).clone();
    next.resources.by_type.insert(type_url.clone(), accepted);
    next.versions
        .insert(type_url.clone(), response.version_info.clone());
    next.last_update = Some(std::time::SystemTime::now());
    info!(%type_url, version = %response.version_info, resources = response.resources.len(), "xDS update applied");
    let mut out = vec![reply(response.version_info.clone(), None)];
    // Clusters name their EDS assignments, listeners their route configurations, and the
    // TLS contexts of both their SDS secrets.
    for (dependent, wanted) in [
        (ENDPOINT, endpoint_names(&next.resources)),
        (ROUTE, route_names(&next.resources)),
        (SECRET, secret_names(&next.resources)),
    ] {
        let had = subscriptions.names.get(dependent);
        if (type_url == CLUSTER && dependent == ENDPOINT
            || type_url == LISTENER && dependent == ROUTE
            || matches!(type_url.as_str(), CLUSTER | LISTENER) && dependent == SECRET)
            && had != Some(&wanted)
            && !(had.is_none() && wanted.is_empty())
        {
            subscriptions
                .names
                .insert(dependent.to_owned(), wanted.clone());
            out.push(DiscoveryRequest {
                type_url: dependent.to_owned(),
                resource_names: wanted,
                version_info: next.versions.get(dependent).cloned().unwrap_or_default(),
                ..Default::default()
            });
        }
    }
    state.send_replace(Arc::new(next));
    out
}

/// The resources of a response by name, or why some of them cannot be used.
fn check_response(response: &DiscoveryResponse) -> Result<BTreeMap<String, Any>, Vec<String>> {
    let mut accepted = BTreeMap::new();
    let mut errors = Vec::new();
    for any in &response.resources {
        if any.type_url != response.type_url {
            errors.push(format!(
                "resource of type {} in a {} response",
                any.type_url, response.type_url
            ));
            continue;
        }
        match check_resource(any) {
            Ok(name) if accepted.contains_key(&name) => errors.push(format!("{name}: sent twice")),
            Ok(name) => {
                accepted.insert(name, any.clone());
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(accepted)
    } else {
        Err(errors)
    }
}

/// Decodes a resource and checks that the agent can apply it; its name, or why not.
pub fn check_resource(any: &Any) -> Result<String, ResourceError> {
    Planned::from_any(any).map(|(name, _)| name)
}

/// Route configurations the listeners load by RDS.
pub fn route_names(resources: &ResourceSet) -> Vec<String> {
    let mut names = BTreeSet::new();
    for any in resources
        .of_type(LISTENER)
        .into_iter()
        .flat_map(|m| m.values())
    {
        let Ok(listener) = Listener::decode(any.value.as_slice()) else {
            continue;
        };
        for chain in listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter())
        {
            for filter in &chain.filters {
                if let Some(ConfigType::TypedConfig(config)) = &filter.config_type
                    && let Ok(manager) = HttpConnectionManager::decode(config.value.as_slice())
                    && let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier
                {
                    names.insert(rds.route_config_name);
                }
            }
        }
    }
    names.into_iter().collect()
}

/// EDS assignments the clusters need.
/// The SDS secrets the TLS contexts of the listeners and clusters in `resources` name.
pub fn secret_names(resources: &ResourceSet) -> Vec<String> {
    let mut names = BTreeSet::new();
    for any in resources
        .of_type(LISTENER)
        .into_iter()
        .flat_map(|m| m.values())
    {
        if let Ok(listener) = Listener::decode(any.value.as_slice()) {
            for socket in listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.iter())
                .filter_map(|chain| chain.transport_socket.as_ref())
            {
                sds::referenced_by(socket, &mut names);
            }
        }
    }
    for any in resources
        .of_type(CLUSTER)
        .into_iter()
        .flat_map(|m| m.values())
    {
        if let Ok(cluster) = Cluster::decode(any.value.as_slice())
            && let Some(socket) = &cluster.transport_socket
        {
            sds::referenced_by(socket, &mut names);
        }
    }
    names.into_iter().collect()
}

pub fn endpoint_names(resources: &ResourceSet) -> Vec<String> {
    let mut names = BTreeSet::new();
    for any in resources
        .of_type(CLUSTER)
        .into_iter()
        .flat_map(|m| m.values())
    {
        let Ok(cluster) = Cluster::decode(any.value.as_slice()) else {
            continue;
        };
        if cluster.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        {
            let service = cluster
                .eds_cluster_config
                .map(|c| c.service_name)
                .unwrap_or_default();
            names.insert(if service.is_empty() {
                cluster.name
            } else {
                service
            });
        }
    }
    names.into_iter().collect()
}
