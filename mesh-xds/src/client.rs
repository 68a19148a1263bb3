//! An ADS client (state of the world) for the node agent, usable against any conforming xDS
//! server: it subscribes to Clusters and Listeners (wildcard), then to the Endpoints and
//! Routes they name; decodes and checks every resource; ACKs a response it accepts and NACKs
//! one it does not (naming each bad resource), keeping the last good state; publishes each
//! accepted state atomically; reconnects with jittered exponential backoff.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
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
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    channel::{self, ChannelError, ControlPlaneTls},
    plan::{Planned, ResourceError, reuse::check_route_table},
    references::{ReferenceSet, References},
    resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, SECRET},
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
    /// What the accepted listeners and clusters name of the other types.
    pub references: ReferenceSet,
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
            ROUTE => !self.references.routes().is_empty(),
            ENDPOINT => !self.references.endpoints().is_empty(),
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
    #[error("checking a response panicked")]
    CheckPanicked,
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
        (ENDPOINT, current.references.endpoints()),
        (ROUTE, current.references.routes()),
        (SECRET, current.references.secrets()),
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
            // Checking decodes what changed, a route table of thousands of virtual hosts
            // among it: tens of milliseconds, on a blocking thread rather than the one that
            // runs the node's proxy.
            let current = Arc::clone(&state.borrow());
            let (response, checked) = tokio::task::spawn_blocking(move || {
                let checked = check_response(&response, &current);
                (response, checked)
            })
            .await
            .map_err(|_| SessionError::CheckPanicked)?;
            for request in on_response(response, checked, state, &mut subscriptions) {
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

/// Handles one response, `checked` against the current state: the ACK or NACK, and new
/// subscriptions it makes necessary.
fn on_response(
    response: DiscoveryResponse,
    checked: Result<Accepted, Vec<String>>,
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
    let accepted = match checked {
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
    next.resources
        .by_type
        .insert(type_url.clone(), Arc::new(accepted.resources));
    next.references
        .by_type
        .insert(type_url.clone(), accepted.references);
    next.versions
        .insert(type_url.clone(), response.version_info.clone());
    next.last_update = Some(std::time::SystemTime::now());
    info!(%type_url, version = %response.version_info, resources = response.resources.len(), "xDS update applied");
    let mut out = vec![reply(response.version_info.clone(), None)];
    // Clusters name their EDS assignments, listeners their route configurations, and the
    // TLS contexts of both their SDS secrets.
    for (dependent, wanted) in [
        (ENDPOINT, next.references.endpoints()),
        (ROUTE, next.references.routes()),
        (SECRET, next.references.secrets()),
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

/// A response's resources by name, with what each names of the other types.
struct Accepted {
    resources: BTreeMap<String, Any>,
    references: BTreeMap<String, References>,
}

/// The resources of a response by name, or why some of them cannot be used. Under the state
/// of the world every response repeats the type's unchanged resources: one byte for byte the
/// same as an accepted one was checked then, and keeps its name and references (a mesh of
/// 10 000 clusters with one changed decodes one, not 10 000).
fn check_response(
    response: &DiscoveryResponse,
    current: &XdsState,
) -> Result<Accepted, Vec<String>> {
    let references_before = current.references.by_type.get(&response.type_url);
    let known: HashMap<&[u8], &String> = current
        .resources
        .of_type(&response.type_url)
        .into_iter()
        .flatten()
        .map(|(name, any)| (any.value.as_slice(), name))
        .collect();
    let mut accepted = Accepted {
        resources: BTreeMap::new(),
        references: BTreeMap::new(),
    };
    let mut errors = Vec::new();
    for any in &response.resources {
        if any.type_url != response.type_url {
            errors.push(format!(
                "resource of type {} in a {} response",
                any.type_url, response.type_url
            ));
            continue;
        }
        let checked = match known.get(any.value.as_slice()) {
            Some(&name) => Ok((
                name.clone(),
                references_before.and_then(|r| r.get(name)).cloned(),
            )),
            None => check_resource(any, current.resources.of_type(&response.type_url))
                .map(|name| (name, Some(References::of(any)))),
        };
        match checked {
            Ok((name, _)) if accepted.resources.contains_key(&name) => {
                errors.push(format!("{name}: sent twice"))
            }
            Ok((name, references)) => {
                if let Some(references) = references.filter(|r| !r.is_empty()) {
                    accepted.references.insert(name.clone(), references);
                }
                accepted.resources.insert(name, any.clone());
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

/// Decodes a resource and checks that the agent can apply it; its name, or why not. A
/// route table's virtual hosts encoded as in the version of it among `accepted` are not
/// checked again.
pub fn check_resource(
    any: &Any,
    accepted: Option<&BTreeMap<String, Any>>,
) -> Result<String, ResourceError> {
    if any.type_url == ROUTE {
        return check_route_table(any, accepted);
    }
    Planned::from_any(any).map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::{
        Cluster,
        cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
    };
    use prost::Message;

    use super::*;

    fn eds_cluster(name: &str, service: &str) -> Any {
        let cluster = Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                service_name: service.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Any {
            type_url: CLUSTER.to_owned(),
            value: cluster.encode_to_vec(),
        }
    }

    fn respond(
        state: &watch::Sender<Arc<XdsState>>,
        subscriptions: &mut Subscriptions,
        version: &str,
        resources: Vec<Any>,
    ) -> Vec<DiscoveryRequest> {
        let response = DiscoveryResponse {
            version_info: version.to_owned(),
            type_url: CLUSTER.to_owned(),
            nonce: version.to_owned(),
            resources,
            ..Default::default()
        };
        let checked = check_response(&response, &state.borrow());
        on_response(response, checked, state, subscriptions)
    }

    fn endpoint_subscription(requests: &[DiscoveryRequest]) -> Option<Vec<String>> {
        requests
            .iter()
            .find(|r| r.type_url == ENDPOINT)
            .map(|r| r.resource_names.clone())
    }

    #[test]
    fn the_endpoints_subscribed_follow_the_clusters_accepted() {
        let (state, _) = watch::channel(Arc::new(XdsState::default()));
        let mut subscriptions = Subscriptions::default();
        let (x, z) = (eds_cluster("x", "svc-x"), eds_cluster("z", "svc-z"));
        let requests = respond(&state, &mut subscriptions, "1", vec![x.clone()]);
        assert_eq!(
            endpoint_subscription(&requests),
            Some(vec!["svc-x".to_owned()])
        );
        assert!(
            !state.borrow().is_synced(),
            "its endpoints are not here yet"
        );
        // x again, unchanged: its reference is kept without decoding it again.
        let requests = respond(&state, &mut subscriptions, "2", vec![x, z.clone()]);
        assert_eq!(
            endpoint_subscription(&requests),
            Some(vec!["svc-x".to_owned(), "svc-z".to_owned()])
        );
        let requests = respond(&state, &mut subscriptions, "3", vec![z]);
        assert_eq!(
            endpoint_subscription(&requests),
            Some(vec!["svc-z".to_owned()])
        );
        assert_eq!(state.borrow().references.endpoints(), ["svc-z"]);
    }

    #[test]
    fn only_resources_that_changed_are_checked_again() {
        // Planted as accepted: bytes the check refuses. A response repeating them is accepted,
        // so they were not checked again; the same name with other bad bytes is refused.
        let planted = Any {
            type_url: CLUSTER.to_owned(),
            value: vec![0xff, 0xff],
        };
        let mut before = XdsState::default();
        before
            .resources
            .insert(CLUSTER, "planted".to_owned(), planted.clone());
        let (state, _) = watch::channel(Arc::new(before));
        let mut subscriptions = Subscriptions::default();
        let fresh = eds_cluster("fresh", "svc-fresh");
        respond(&state, &mut subscriptions, "2", vec![planted, fresh]);
        assert_eq!(
            state.borrow().versions.get(CLUSTER).map(String::as_str),
            Some("2")
        );
        assert_eq!(
            state.borrow().resources.of_type(CLUSTER).map(BTreeMap::len),
            Some(2)
        );
        let changed = Any {
            type_url: CLUSTER.to_owned(),
            value: vec![0xff, 0xfe],
        };
        let requests = respond(&state, &mut subscriptions, "3", vec![changed]);
        assert!(
            requests[0].error_detail.is_some(),
            "a changed resource is checked"
        );
        assert_eq!(
            state.borrow().versions.get(CLUSTER).map(String::as_str),
            Some("2")
        );
    }
}
