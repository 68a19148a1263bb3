//! The compiler's output for a real mesh, and the ADS server and client talking gRPC over
//! loopback in one process: initial sync, a change propagating, a NACK keeping the last good
//! state, a server restart.
// A test's (or benchmark's) panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use control_plane::{
    ads::{AdsServer, MeshSource, Publisher, Stats},
    compile::{MeshIndex, Reuse, Serving, Workloads, compile, compile_served},
    placement::Placement,
    registry::Registry,
    secrets::SecretStore,
};
use envoy_types::pb::envoy::config::{
    cluster::v3::{Cluster, cluster::LbPolicy},
    core::v3::Node,
    listener::v3::Listener,
    route::v3::{RouteConfiguration, route::Action, route_action::ClusterSpecifier},
};
use mesh_model::{
    source::{self, LoadOptions},
    validate::{self, Options},
};
use mesh_xds::{
    client::{self, Settings, XdsState},
    plan::NodePlan,
    plan::node_pods::NodePod,
    resources::{CLUSTER, ENDPOINT, LISTENER, ROUTE, ResourceSet, SECRET},
};
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn shop() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop")
}

fn index_of(dir: &std::path::Path) -> MeshIndex {
    let loaded = source::load(&[dir.to_owned()], &LoadOptions::default());
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    let found = validate::validate(
        &loaded.resources,
        Options {
            check_references: true,
            lenient: false,
        },
    );
    // Notes (ACM exists only on AWS) do not stop a mesh.
    assert!(!found.iter().any(|d| d.is_error()), "{found:?}");
    MeshIndex::new(&loaded.resources).unwrap()
}

fn decode<M: Message + Default>(resources: &ResourceSet, type_url: &str, name: &str) -> M {
    let any = resources
        .of_type(type_url)
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| {
            panic!(
                "no {type_url} {name}; have {:?}",
                resources
                    .of_type(type_url)
                    .map(|m| m.keys().collect::<Vec<_>>())
            )
        });
    M::decode(any.value.as_slice()).unwrap()
}

/// The names of the resources of one type.
fn names_of<'a>(resources: &'a ResourceSet, type_url: &str) -> Vec<&'a String> {
    resources
        .of_type(type_url)
        .map(|m| m.keys().collect())
        .unwrap_or_default()
}

fn weights(routes: &RouteConfiguration) -> Vec<(String, u32)> {
    let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else {
        panic!("no route action")
    };
    let Some(ClusterSpecifier::WeightedClusters(weighted)) = &action.cluster_specifier else {
        panic!("not weighted")
    };
    weighted
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
        .collect()
}

#[test]
fn compiles_the_mesh_the_way_app_mesh_configured_envoy() {
    let compiled = compile(&index_of(&shop()), &Registry::default(), &Workloads::All);
    assert!(compiled.issues.is_empty(), "{:?}", compiled.issues);
    let resources = &compiled.resources;
    // Outbound: what web's listener reaches (api-v1, api-v2, db) and every node's own
    // cluster (its endpoints identify its pods); inbound: every node's local application per
    // listener.
    let clusters = names_of(resources, CLUSTER);
    assert_eq!(
        clusters,
        [
            "shop/api-v1/9090",
            "shop/api-v1/inbound/9090",
            "shop/api-v2/9090",
            "shop/api-v2/inbound/9090",
            "shop/db/5432",
            "shop/db/inbound/5432",
            "shop/ingress/internal",
            "shop/web/8080",
            "shop/web/inbound/8080"
        ]
    );
    // Callers eject bad endpoints; the connection pool and health check apply both ways:
    // every calling node proxy toward the node's endpoints, and toward the local app.
    let api: Cluster = decode(resources, CLUSTER, "shop/api-v1/9090");
    let outlier = api.outlier_detection.unwrap();
    assert_eq!(outlier.consecutive_5xx.unwrap().value, 5);
    assert_eq!(outlier.base_ejection_time.unwrap().seconds, 30);
    assert_eq!(outlier.max_ejection_percent.unwrap().value, 50);
    let outbound_limits = &api.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(outbound_limits.max_connections.unwrap().value, 100);
    assert_eq!(api.health_checks[0].interval.unwrap().seconds, 5);
    let local: Cluster = decode(resources, CLUSTER, "shop/api-v1/inbound/9090");
    let thresholds = &local.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(
        (
            thresholds.max_connections.unwrap().value,
            thresholds.max_pending_requests.unwrap().value
        ),
        (100, 10)
    );
    assert_eq!(local.health_checks[0].interval.unwrap().seconds, 5);
    let inbound: Listener = decode(resources, LISTENER, "shop/api-v1/inbound");
    let chain = &inbound.filter_chains[0];
    assert_eq!(
        chain
            .filter_chain_match
            .as_ref()
            .unwrap()
            .destination_port
            .unwrap()
            .value,
        9090
    );
    assert!(chain.transport_socket.is_none(), "no TLS configured");
    // Cloud Map discovery: EDS, with an assignment for the cluster.
    assert!(
        resources
            .of_type(ENDPOINT)
            .unwrap()
            .contains_key("shop/db/5432")
    );

    let listener: Listener = decode(resources, LISTENER, "shop/web/outbound");
    let ports: Vec<u32> = listener
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port
                .unwrap()
                .value
        })
        .collect();
    assert_eq!(ports, [5432, 9090]);
    assert!(
        listener.default_filter_chain.is_none(),
        "DROP_ALL: no passthrough"
    );

    let routes: RouteConfiguration = decode(resources, ROUTE, "shop/web/outbound/9090");
    let host = &routes.virtual_hosts[0];
    assert_eq!(host.domains, ["api.shop.local", "api.shop.local:9090"]);
    assert_eq!(
        weights(&routes),
        [
            ("shop/api-v1/9090".to_owned(), 90),
            ("shop/api-v2/9090".to_owned(), 10)
        ]
    );
    let Some(Action::Route(action)) = &host.routes[0].action else {
        panic!()
    };
    let retry = action.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "5xx,retriable-status-codes,connect-failure");
    assert_eq!(retry.retriable_status_codes, [409]);
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(retry.per_try_timeout.unwrap().nanos, 500_000_000);
    assert_eq!(action.timeout.unwrap().seconds, 3);
    let header = &host.routes[0].r#match.as_ref().unwrap().headers[0];
    assert_eq!(
        (header.name.as_str(), header.invert_match),
        ("x-canary", true)
    );
}

fn served(secrets: SecretStore) -> Serving {
    Serving {
        secrets: Arc::new(secrets),
        ..Serving::default()
    }
}

fn mesh(index: MeshIndex) -> MeshSource {
    MeshSource::Mesh(
        Arc::new(index),
        Arc::new(Registry::default()),
        Serving::default(),
    )
}

struct Control {
    addr: SocketAddr,
    publisher: Publisher,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

async fn start_server(addr: SocketAddr, mesh: MeshSource) -> Control {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, publisher) = AdsServer::new(mesh);
    let stats = server.stats();
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .unwrap();
    });
    Control {
        addr,
        publisher,
        stats,
        stop,
    }
}

fn start_client(
    addr: SocketAddr,
    node: Node,
) -> (watch::Receiver<Arc<XdsState>>, CancellationToken) {
    let (sender, receiver) = watch::channel(Arc::new(XdsState::default()));
    let stop = CancellationToken::new();
    let settings = Settings {
        endpoint: format!("http://{addr}"),
        tls: None,
        node,
    };
    tokio::spawn(client::run(settings, sender, stop.clone()));
    (receiver, stop)
}

async fn wait_for(
    state: &mut watch::Receiver<Arc<XdsState>>,
    what: impl Fn(&XdsState) -> bool,
) -> Arc<XdsState> {
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| what(s)))
        .await
        .expect("state reached in time")
        .map(|s| Arc::clone(&s))
        .expect("client running")
}

#[tokio::test]
async fn initial_sync_change_nack_and_restart() {
    let index = index_of(&shop());
    let expected = compile(&index, &Registry::default(), &Workloads::All).resources;
    let mut control = start_server("127.0.0.1:0".parse().unwrap(), mesh(index)).await;
    let (mut state, stop_client) = start_client(control.addr, client::node("node-1", &[]));

    // Initial sync: clusters, listeners, then the routes and endpoints they name.
    let synced = wait_for(&mut state, |s| s.is_synced() && s.versions.len() == 4).await;
    assert_eq!(synced.resources, expected);
    assert!(
        synced.versions.values().all(|v| v == "v1"),
        "{:?}",
        synced.versions
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(control.stats.acks.load(Ordering::Relaxed), 4);

    // A change reaches the client: the canary gets half the traffic.
    let changed = tempdir_with_shop(|route| {
        route
            .replace("\"weight\": 90", "\"weight\": 50")
            .replace("\"weight\": 10", "\"weight\": 50")
    });
    let started = Instant::now();
    control.publisher.publish(mesh(index_of(changed.path())));
    let updated = wait_for(&mut state, |s| {
        s.versions.get(ROUTE).is_some_and(|v| v == "v2")
    })
    .await;
    let latency = started.elapsed();
    let routes: RouteConfiguration = decode(&updated.resources, ROUTE, "shop/web/outbound/9090");
    assert_eq!(
        weights(&routes),
        [
            ("shop/api-v1/9090".to_owned(), 50),
            ("shop/api-v2/9090".to_owned(), 50)
        ]
    );
    assert!(latency < Duration::from_secs(1), "change took {latency:?}");
    // Only the route configuration changed; clusters and listeners were not resent.
    assert_eq!(
        updated.versions.get(CLUSTER).map(String::as_str),
        Some("v1")
    );

    // A resource the client cannot apply is NACKed and the last good state stays.
    let mut bad = updated.resources.clone();
    let cluster = Cluster {
        name: "shop/api-v1/9090".into(),
        lb_policy: LbPolicy::Maglev as i32,
        ..Default::default()
    };
    bad.insert(
        CLUSTER,
        cluster.name.clone(),
        envoy_types::util::pack_any(cluster),
    );
    control.publisher.publish(MeshSource::Fixed(bad));
    tokio::time::timeout(Duration::from_secs(5), async {
        while control.stats.nacks.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("NACK received");
    let after = Arc::clone(&state.borrow());
    assert_eq!(
        after.resources.of_type(CLUSTER),
        updated.resources.of_type(CLUSTER)
    );
    assert_eq!(after.versions.get(CLUSTER).map(String::as_str), Some("v1"));

    // Control plane restart: the client reconnects and resyncs from the new server. (Ending
    // the publisher ends the streams, as a stopping control plane does.)
    drop(control.publisher);
    control.stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = start_server(control.addr, mesh(index_of(&shop()))).await;
    let resynced = wait_for(&mut state, |s| {
        s.resources
            .of_type(ROUTE)
            .and_then(|r| r.get("shop/web/outbound/9090"))
            .is_some_and(|any| {
                weights(&RouteConfiguration::decode(any.value.as_slice()).unwrap())[0].1 == 90
            })
    })
    .await;
    assert_eq!(resynced.resources, expected);
    assert!(restarted.stats.streams.load(Ordering::Relaxed) >= 1);
    stop_client.cancel();
    restarted.stop.cancel();
}

#[tokio::test]
async fn a_node_gets_only_what_its_workloads_need() {
    let control = start_server("127.0.0.1:0".parse().unwrap(), mesh(index_of(&shop()))).await;
    let (mut state, stop) = start_client(
        control.addr,
        client::node("node-1", &["shop/api-v1".to_owned()]),
    );
    let synced = wait_for(&mut state, |s| {
        s.versions.contains_key(CLUSTER) && s.versions.contains_key(LISTENER)
    })
    .await;
    // api-v1 has no backends: its inbound side and its own cluster only.
    let names: Vec<&String> = synced
        .resources
        .by_type
        .values()
        .flat_map(|m| m.keys())
        .collect();
    assert_eq!(
        names,
        [
            "shop/api-v1/9090",
            "shop/api-v1/inbound/9090",
            "shop/api-v1/inbound"
        ]
    );
    stop.cancel();
    control.stop.cancel();
}

/// From a cluster, a node is sent the configuration of its pods' workloads only, and the
/// list of its pods (through the real client, which decodes it); a node with no pods gets
/// nothing, whatever it asks for.
#[tokio::test]
async fn a_node_trusted_with_its_pods_workloads_only() {
    let pod = |ip: [u8; 4], workload: &str| NodePod {
        ip: ip.into(),
        workload: workload.into(),
        pod: format!("shop/{workload}"),
    };
    let placement = Placement::new(BTreeMap::from([(
        "node-1".to_owned(),
        vec![pod([10, 1, 0, 5], "shop/api-v1")],
    )]));
    let serving = Serving {
        placement: Some(Arc::new(placement)),
        ..Serving::default()
    };
    let source = MeshSource::Mesh(
        Arc::new(index_of(&shop())),
        Arc::new(Registry::default()),
        serving,
    );
    let control = start_server("127.0.0.1:0".parse().unwrap(), source).await;
    // Asking for every workload (no metadata) or for another node's gets only its own.
    let (mut state, stop) = start_client(control.addr, client::node("node-1", &[]));
    let synced = wait_for(&mut state, |s| {
        s.versions.contains_key(CLUSTER) && s.versions.contains_key(LISTENER)
    })
    .await;
    assert_eq!(
        names_of(&synced.resources, CLUSTER),
        [
            "mesh-agent/node-pods",
            "shop/api-v1/9090",
            "shop/api-v1/inbound/9090"
        ]
    );
    let (plan, errors) = NodePlan::from_resources(&synced.resources);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        plan.node_pods,
        Some(vec![pod([10, 1, 0, 5], "shop/api-v1")])
    );
    assert!(
        !plan.clusters.contains_key("mesh-agent/node-pods"),
        "not an upstream"
    );
    stop.cancel();

    let (mut state, stop) = start_client(
        control.addr,
        client::node("node-2", &["shop/api-v1".to_owned()]),
    );
    let synced = wait_for(&mut state, |s| {
        s.versions.contains_key(CLUSTER) && s.versions.contains_key(LISTENER)
    })
    .await;
    assert_eq!(
        names_of(&synced.resources, CLUSTER),
        ["mesh-agent/node-pods"]
    );
    assert!(names_of(&synced.resources, LISTENER).is_empty());
    let (plan, _) = NodePlan::from_resources(&synced.resources);
    assert_eq!(plan.node_pods, Some(Vec::new()));
    stop.cancel();
    control.stop.cancel();
}

fn tempdir_with_shop(change_route: impl Fn(&str) -> String) -> TempDir {
    let dir = TempDir::new();
    for entry in std::fs::read_dir(shop()).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let text = if entry.file_name() == "route-api.json" {
            change_route(&text)
        } else {
            text
        };
        std::fs::write(dir.path().join(entry.file_name()), text).unwrap();
    }
    dir
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mesh-xds-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn cloud_map_instances_become_endpoints() {
    use envoy_types::pb::envoy::config::{
        core::v3::address::Address,
        endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
    };
    let mut registry = Registry::default();
    let attrs = |ip: &str, port: Option<&str>| {
        let mut a = control_plane::registry::Attributes::new();
        a.insert("AWS_INSTANCE_IPV4".into(), ip.into());
        if let Some(port) = port {
            a.insert("AWS_INSTANCE_PORT".into(), port.into());
        }
        a
    };
    registry
        .register("shop.local", "db", "db-1", attrs("10.1.0.1", None))
        .unwrap();
    registry
        .register("shop.local", "db", "db-2", attrs("10.1.0.2", Some("6432")))
        .unwrap();
    registry
        .register("shop.local", "other", "o-1", attrs("10.1.0.3", None))
        .unwrap();
    let compiled = compile(&index_of(&shop()), &registry, &Workloads::All);
    let assignment: ClusterLoadAssignment = decode(&compiled.resources, ENDPOINT, "shop/db/5432");
    let endpoints: Vec<(String, u32)> = assignment.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| {
            let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                panic!()
            };
            let Some(Address::SocketAddress(socket)) = &endpoint.address.as_ref().unwrap().address
            else {
                panic!()
            };
            let Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    port,
                ),
            ) = socket.port_specifier
            else {
                panic!()
            };
            (socket.address.clone(), port)
        })
        .collect();
    // The listener's port unless the instance names its own.
    assert_eq!(
        endpoints,
        [("10.1.0.1".to_owned(), 5432), ("10.1.0.2".to_owned(), 6432)]
    );
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let mut control = start_server("127.0.0.1:0".parse().unwrap(), mesh(index_of(&shop()))).await;
    let url = format!("http://{}", control.addr);

    let (requests, mut responses) = open_delta(&url, Default::default()).await;
    let first = next_delta(&mut responses).await;
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(names.contains(&"shop/db/5432"));
    let known: std::collections::HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    requests
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.into(),
            response_nonce: first.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Weights change: no cluster changes, so nothing is sent for clusters.
    let reweighted = tempdir_with_shop(|route| {
        route
            .replace("\"weight\": 90", "\"weight\": 50")
            .replace("\"weight\": 10", "\"weight\": 50")
    });
    control.publisher.publish(mesh(index_of(reweighted.path())));
    let quiet = tokio::time::timeout(Duration::from_millis(300), responses.message()).await;
    assert!(quiet.is_err(), "no cluster changed, yet a response came");

    // db leaves the mesh (and web's backends): its clusters are removed, and only that is
    // said.
    let dir = tempdir_with_shop(|route| route.to_owned());
    let web = dir.path().join("vn-web.json");
    let text = std::fs::read_to_string(&web).unwrap().replace(
        ",\n      {\"virtualService\": {\"virtualServiceName\": \"db.shop.local\"}}",
        "",
    );
    std::fs::write(&web, text).unwrap();
    for gone in ["vn-db.json", "vs-db.json"] {
        std::fs::remove_file(dir.path().join(gone)).unwrap();
    }
    control.publisher.publish(mesh(index_of(dir.path())));
    let removal = next_delta(&mut responses).await;
    assert!(
        removal.resources.is_empty(),
        "{:?}",
        removal
            .resources
            .iter()
            .map(|r| &r.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        removal.removed_resources,
        ["shop/db/5432", "shop/db/inbound/5432"]
    );

    // A reconnecting client that says what it has gets nothing it already holds.
    let (_requests, mut responses) = open_delta(&url, known).await;
    let resumed = next_delta(&mut responses).await;
    assert!(resumed.resources.is_empty());
    assert_eq!(
        resumed.removed_resources,
        ["shop/db/5432", "shop/db/inbound/5432"]
    );
    control.stop.cancel();
}

/// A delta ADS stream subscribed to clusters, saying which versions it already holds.
async fn open_delta(
    url: &str,
    known: std::collections::HashMap<String, String>,
) -> (
    tokio::sync::mpsc::Sender<
        envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
    >,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
) {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    };
    let mut grpc = AggregatedDiscoveryServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let (requests, receiver) = tokio::sync::mpsc::channel(8);
    requests
        .send(DeltaDiscoveryRequest {
            node: Some(client::node("delta", &[])),
            type_url: CLUSTER.into(),
            initial_resource_versions: known,
            ..Default::default()
        })
        .await
        .unwrap();
    let stream = tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(receiver);
    let responses = grpc
        .delta_aggregated_resources(stream)
        .await
        .unwrap()
        .into_inner();
    (requests, responses)
}

async fn next_delta(
    responses: &mut tonic::Streaming<
        envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    >,
) -> envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("response in time")
        .expect("stream ok")
        .expect("stream open")
}

#[test]
fn listener_tls_terminates_at_the_inbound_side() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, common_tls_context::ValidationContextType,
    };
    let dir = tempdir_with_shop(|route| route.to_owned());
    let api = dir.path().join("vn-api-v1.json");
    let text = std::fs::read_to_string(&api).unwrap().replace(
        "\"portMapping\": {\"port\": 9090, \"protocol\": \"http\"},",
        r#""portMapping": {"port": 9090, "protocol": "http"},
           "tls": {"mode": "PERMISSIVE",
                   "certificate": {"file": {"certificateChain": "/certs/api.pem", "privateKey": "/certs/api.key"}},
                   "validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}},
                                  "subjectAlternativeNames": {"match": {"exact": ["spiffe://shop/web"]}}}},"#,
    );
    std::fs::write(&api, text).unwrap();
    let compiled = compile(&index_of(dir.path()), &Registry::default(), &Workloads::All);
    let inbound: Listener = decode(&compiled.resources, LISTENER, "shop/api-v1/inbound");
    // PERMISSIVE: a TLS chain and a plaintext chain, told apart by the TLS inspector.
    let transports: Vec<&str> = inbound
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .transport_protocol
                .as_str()
        })
        .collect();
    assert_eq!(transports, ["tls", "raw_buffer"]);
    assert_eq!(
        inbound.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let socket = inbound.filter_chains[0].transport_socket.as_ref().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &socket.config_type
    else {
        panic!()
    };
    let context = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert!(context.require_client_certificate.unwrap().value);
    let common = context.common_tls_context.unwrap();
    assert_eq!(
        format!(
            "{:?}",
            common.tls_certificates[0]
                .certificate_chain
                .as_ref()
                .unwrap()
                .specifier
        ),
        "Some(Filename(\"/certs/api.pem\"))"
    );
    let Some(ValidationContextType::ValidationContext(validation)) = common.validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        format!(
            "{:?}",
            validation.match_typed_subject_alt_names[0]
                .matcher
                .as_ref()
                .unwrap()
                .match_pattern
        ),
        "Some(Exact(\"spiffe://shop/web\"))"
    );

    // An ACM certificate cannot be served here: the port's TLS refuses (a certificate that
    // cannot be had), with the reason; the port is still captured.
    let text = std::fs::read_to_string(&api).unwrap().replace(
        r#""certificate": {"file": {"certificateChain": "/certs/api.pem", "privateKey": "/certs/api.key"}}"#,
        r#""certificate": {"acm": {"certificateArn": "arn:aws:acm:us-west-2:1:certificate/x"}}"#,
    );
    std::fs::write(&api, text).unwrap();
    let compiled = compile(&index_of(dir.path()), &Registry::default(), &Workloads::All);
    let (plan, errors) = mesh_xds::plan::NodePlan::from_resources(&compiled.resources);
    assert!(errors.is_empty(), "{errors:?}");
    // (PERMISSIVE here: plain text stays as the mode says; TLS is refused.)
    let port = &plan.inbound["shop/api-v1"].ports[&9090];
    assert!(matches!(
        &port.tls.as_ref().unwrap().tls.certificate,
        mesh_xds::plan::tls::CertificateSource::Sds(name)
            if mesh_xds::names::unavailable_secret_reason(name).is_some()
    ));
    assert!(
        compiled.issues[0]
            .contains("VirtualNode api-v1 listener 9090: ACM certificates exist only inside AWS"),
        "{:?}",
        compiled.issues
    );
}

#[test]
fn a_gateway_routes_through_its_routes_then_the_service_routing() {
    use envoy_types::pb::envoy::config::{
        listener::v3::listener::ListenerSpecifier, route::v3::route_action::HostRewriteSpecifier,
    };
    let ingress = Workloads::Only([("shop".to_owned(), "ingress".to_owned())].into());
    let compiled = compile(&index_of(&shop()), &Registry::default(), &ingress);
    assert!(compiled.issues.is_empty(), "{:?}", compiled.issues);
    let listeners = names_of(&compiled.resources, LISTENER);
    assert_eq!(
        listeners,
        ["shop/ingress/ingress/8088", "shop/ingress/internal"]
    );
    let internal: Listener = decode(&compiled.resources, LISTENER, "shop/ingress/internal");
    assert!(matches!(
        internal.listener_specifier,
        Some(ListenerSpecifier::InternalListener(_))
    ));

    // First table: the gateway route, its hostname match and its rewrites.
    let ingress_routes: RouteConfiguration =
        decode(&compiled.resources, ROUTE, "shop/ingress/ingress/8088");
    let route = &ingress_routes.virtual_hosts[0].routes[0];
    assert_eq!(route.name, "to-api");
    let matching = route.r#match.as_ref().unwrap();
    assert_eq!(
        format!("{:?}", matching.path_specifier),
        "Some(Prefix(\"/api/\"))"
    );
    assert_eq!(matching.headers[0].name, ":authority");
    assert_eq!(matching.query_parameters[0].name, "beta");
    let Some(Action::Route(action)) = &route.action else {
        panic!()
    };
    assert_eq!(
        format!("{:?}", action.cluster_specifier),
        "Some(Cluster(\"shop/ingress/internal\"))"
    );
    assert_eq!(
        action.host_rewrite_specifier,
        Some(HostRewriteSpecifier::HostRewriteLiteral(
            "api.shop.local".into()
        ))
    );
    assert_eq!(action.prefix_rewrite, "/v1/");

    // Second table: the service's own routing, the canary split.
    let internal_routes: RouteConfiguration =
        decode(&compiled.resources, ROUTE, "shop/ingress/internal");
    assert_eq!(
        internal_routes.virtual_hosts[0].domains,
        ["api.shop.local", "api.shop.local:9090"]
    );
    assert_eq!(
        weights(&internal_routes),
        [
            ("shop/api-v1/9090".to_owned(), 90),
            ("shop/api-v2/9090".to_owned(), 10)
        ]
    );
    let clusters = names_of(&compiled.resources, CLUSTER);
    assert_eq!(
        clusters,
        [
            "shop/api-v1/9090",
            "shop/api-v2/9090",
            "shop/ingress/internal"
        ]
    );
}

#[test]
fn compiled_resources_print_as_envoy_json() {
    let compiled = compile(&index_of(&shop()), &Registry::default(), &Workloads::All);
    let json = mesh_xds::json::resources(&compiled.resources).unwrap();
    let routes = json["RouteConfiguration"].as_array().unwrap();
    let web = routes
        .iter()
        .find(|r| r["name"] == "shop/web/outbound/9090")
        .unwrap();
    let action = &web["virtualHosts"][0]["routes"][0]["route"];
    assert_eq!(
        action["weightedClusters"]["clusters"][0]["name"],
        "shop/api-v1/9090"
    );
    assert_eq!(action["weightedClusters"]["clusters"][0]["weight"], 90);
    assert_eq!(
        action["retryPolicy"]["retryOn"],
        "5xx,retriable-status-codes,connect-failure"
    );
    assert_eq!(
        web["@type"],
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    );
    // Nested Any (the HTTP connection manager in a listener) is expanded too.
    let listener = json["Listener"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "shop/web/outbound")
        .unwrap();
    let filter = &listener["filterChains"][1]["filters"][0]["typedConfig"];
    assert_eq!(filter["rds"]["routeConfigName"], "shop/web/outbound/9090");
}

#[test]
fn client_policy_tls_originates_on_copies_of_the_clusters() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let dir = tempdir_with_shop(|route| route.to_owned());
    let web = dir.path().join("vn-web.json");
    let text = std::fs::read_to_string(&web).unwrap().replace(
        "\"serviceDiscovery\": {\"dns\": {\"hostname\": \"web.shop.local\"}},",
        r#""serviceDiscovery": {"dns": {"hostname": "web.shop.local"}},
           "backendDefaults": {"clientPolicy": {"tls": {
               "ports": [9090],
               "certificate": {"file": {"certificateChain": "/certs/web.pem", "privateKey": "/certs/web.key"}},
               "validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}},
                              "subjectAlternativeNames": {"match": {"exact": ["spiffe://shop/api"]}}}}}},"#,
    );
    std::fs::write(&web, text).unwrap();
    let only_web = Workloads::Only([("shop".to_owned(), "web".to_owned())].into());
    let compiled = compile(&index_of(dir.path()), &Registry::default(), &only_web);
    assert!(compiled.issues.is_empty(), "{:?}", compiled.issues);
    // Port 9090 (api) goes through TLS copies; port 5432 (db) is outside `ports`, plain.
    let clusters = names_of(&compiled.resources, CLUSTER);
    assert_eq!(
        clusters,
        [
            "shop/api-v1/9090/from/web",
            "shop/api-v2/9090/from/web",
            "shop/db/5432",
            "shop/web/8080",
            "shop/web/inbound/8080"
        ]
    );
    let routes: RouteConfiguration = decode(&compiled.resources, ROUTE, "shop/web/outbound/9090");
    assert_eq!(
        weights(&routes)[0],
        ("shop/api-v1/9090/from/web".to_owned(), 90)
    );
    let copy: Cluster = decode(&compiled.resources, CLUSTER, "shop/api-v1/9090/from/web");
    assert!(
        copy.outlier_detection.is_some(),
        "a copy keeps the cluster's settings"
    );
    let socket = copy.transport_socket.unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = socket.config_type
    else {
        panic!()
    };
    let context = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let common = context.common_tls_context.unwrap();
    assert_eq!(
        common.tls_certificates.len(),
        1,
        "client certificate for mutual TLS"
    );
    assert!(common.validation_context_type.is_some());
}

/// A secrets file naming one certificate, its PEM files written with `serial` inside.
fn write_secrets(dir: &std::path::Path, serial: &str) -> SecretStore {
    std::fs::write(
        dir.join("api.pem"),
        format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("api.key"),
        "-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let file = dir.join("secrets.json");
    std::fs::write(
        &file,
        r#"{"secrets": {"spiffe://shop/api": {"certificateChain": "api.pem", "privateKey": "api.key"}}}"#,
    )
    .unwrap();
    SecretStore::load(&file).unwrap()
}

#[tokio::test]
async fn sds_secrets_named_by_tls_contexts_are_served_and_rotated() {
    use envoy_types::pb::envoy::{
        config::core::v3::data_source::Specifier,
        extensions::transport_sockets::tls::v3::{Secret, secret},
    };
    let dir = tempdir_with_shop(|route| route.to_owned());
    let api = dir.path().join("vn-api-v1.json");
    let text = std::fs::read_to_string(&api).unwrap().replace(
        "\"portMapping\": {\"port\": 9090, \"protocol\": \"http\"},",
        r#""portMapping": {"port": 9090, "protocol": "http"},
           "tls": {"mode": "STRICT", "certificate": {"sds": {"secretName": "spiffe://shop/api"}}},"#,
    );
    std::fs::write(&api, text).unwrap();
    let index = Arc::new(index_of(dir.path()));

    // Named but not in the secrets file: an issue naming it.
    let missing = compile_served(
        &index,
        &Registry::default(),
        &Serving::default(),
        &Reuse::default(),
        &Workloads::All,
    );
    assert!(
        missing
            .issues
            .iter()
            .any(|i| i.contains("SDS secret \"spiffe://shop/api\"")),
        "{:?}",
        missing.issues
    );

    let secrets = tempfile::tempdir().unwrap();
    let store = write_secrets(secrets.path(), "first");
    let source = MeshSource::Mesh(
        Arc::clone(&index),
        Arc::new(Registry::default()),
        served(store),
    );
    let mut control = start_server("127.0.0.1:0".parse().unwrap(), source).await;
    let (mut state, stop_client) = start_client(control.addr, client::node("node-1", &[]));
    let chain_of = |state: &XdsState| -> Option<Vec<u8>> {
        let any = state.resources.of_type(SECRET)?.get("spiffe://shop/api")?;
        let secret = Secret::decode(any.value.as_slice()).ok()?;
        let Some(secret::Type::TlsCertificate(certificate)) = secret.r#type else {
            return None;
        };
        match certificate.certificate_chain?.specifier? {
            Specifier::InlineBytes(bytes) => Some(bytes),
            _ => None,
        }
    };
    // The listener names the secret: the client asks for it and gets the material inline.
    let synced = wait_for(&mut state, |s| chain_of(s).is_some()).await;
    assert!(
        String::from_utf8(chain_of(&synced).unwrap())
            .unwrap()
            .contains("first")
    );

    // Rotation: new PEM files, published; the client gets the new certificate.
    let rotated = write_secrets(secrets.path(), "second");
    control.publisher.publish(MeshSource::Mesh(
        Arc::clone(&index),
        Arc::new(Registry::default()),
        served(rotated),
    ));
    let rotated = wait_for(&mut state, |s| {
        chain_of(s).is_some_and(|chain| String::from_utf8_lossy(&chain).contains("second"))
    })
    .await;
    assert!(rotated.nacks.is_empty(), "{:?}", rotated.nacks);
    stop_client.cancel();
    control.stop.cancel();
}

/// The shop mesh with `gateway` as its virtual gateway `ingress`, compiled for that gateway
/// (no issues); its resources and its internal route table.
fn compile_ingress_gateway(gateway: &str) -> (ResourceSet, RouteConfiguration) {
    let dir = tempdir_with_shop(|route| route.to_owned());
    std::fs::write(dir.path().join("vg-ingress.json"), gateway).unwrap();
    let ingress = Workloads::Only([("shop".to_owned(), "ingress".to_owned())].into());
    let compiled = compile(&index_of(dir.path()), &Registry::default(), &ingress);
    assert!(compiled.issues.is_empty(), "{:?}", compiled.issues);
    let internal_routes = decode(&compiled.resources, ROUTE, "shop/ingress/internal");
    (compiled.resources, internal_routes)
}

#[test]
fn a_gateway_listeners_pool_and_health_check_apply_to_its_copies_of_the_targets() {
    let (resources, internal_routes) = compile_ingress_gateway(
        r#"{"meshName": "shop", "virtualGatewayName": "ingress", "spec": {"listeners": [{
            "portMapping": {"port": 8088, "protocol": "http"},
            "connectionPool": {"http": {"maxConnections": 7, "maxPendingRequests": 3}},
            "healthCheck": {"protocol": "http", "path": "/ping", "port": 8088,
                            "intervalMillis": 5000, "timeoutMillis": 2000,
                            "healthyThreshold": 2, "unhealthyThreshold": 3}}]}}"#,
    );
    assert_eq!(
        weights(&internal_routes),
        [
            ("shop/api-v1/9090/via/ingress".to_owned(), 90),
            ("shop/api-v2/9090/via/ingress".to_owned(), 10)
        ]
    );
    // Only the gateway's copies are emitted for it: the originals are nobody else's here.
    assert_eq!(
        names_of(&resources, CLUSTER),
        [
            "shop/api-v1/9090/via/ingress",
            "shop/api-v2/9090/via/ingress",
            "shop/ingress/internal"
        ]
    );
    let copy: Cluster = decode(&resources, CLUSTER, "shop/api-v1/9090/via/ingress");
    let thresholds = &copy.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(thresholds.max_connections.unwrap().value, 7);
    assert_eq!(thresholds.max_pending_requests.unwrap().value, 3);
    let check = &copy.health_checks[0];
    assert_eq!(check.unhealthy_threshold.unwrap().value, 3);
    assert_eq!(check.alt_port, None, "probes the target's own port");
    // Same endpoints as the original: the EDS/DNS settings are the original's.
    assert_eq!(
        copy.load_assignment.unwrap().cluster_name,
        "shop/api-v1/9090"
    );
}

#[test]
fn a_gateway_originates_tls_to_its_targets_by_its_backend_defaults() {
    let (resources, internal_routes) = compile_ingress_gateway(
        r#"{"meshName": "shop", "virtualGatewayName": "ingress", "spec": {
            "listeners": [{"portMapping": {"port": 8088, "protocol": "http"},
                           "connectionPool": {"http": {"maxConnections": 7}}}],
            "backendDefaults": {"clientPolicy": {"tls": {"ports": [9090],
                "validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}}}}}}}}"#,
    );
    assert_eq!(
        weights(&internal_routes),
        [
            ("shop/api-v1/9090/via/ingress/tls".to_owned(), 90),
            ("shop/api-v2/9090/via/ingress/tls".to_owned(), 10)
        ]
    );
    // One copy per target carries both: the TLS origination and the listener's pool.
    let copy: Cluster = decode(&resources, CLUSTER, "shop/api-v1/9090/via/ingress/tls");
    assert!(copy.transport_socket.is_some());
    assert_eq!(
        copy.circuit_breakers.unwrap().thresholds[0]
            .max_connections
            .unwrap()
            .value,
        7
    );
}

/// The control plane serving a directory of files: one changed file reaches a connected
/// client, a change that does not validate leaves it the last good mesh, and a deleted file
/// takes its resources away — through the incremental reload and the file change events.
#[tokio::test]
async fn served_files_changed_rejected_and_deleted_reach_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: serde_json::Value| {
        std::fs::write(dir.path().join(name), body.to_string()).unwrap();
    };
    let node = |name: &str, port: u32, backends: serde_json::Value| {
        serde_json::json!({"meshName": "m", "virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": format!("{name}.m.local")}},
            "backends": backends}})
    };
    write(
        "mesh.json",
        serde_json::json!({"meshName": "m", "spec": {}}),
    );
    write(
        "vn-web.json",
        node(
            "web",
            80,
            serde_json::json!([{"virtualService": {"virtualServiceName": "a.m.local"}}]),
        ),
    );
    write("vn-a.json", node("a", 8080, serde_json::json!([])));
    write(
        "vs-a.json",
        serde_json::json!({"meshName": "m", "virtualServiceName": "a.m.local",
            "spec": {"provider": {"virtualNode": {"virtualNodeName": "a"}}}}),
    );
    let control_plane = control_plane::ControlPlane::start(control_plane::Options::loopback(vec![
        dir.path().to_owned(),
    ]))
    .await
    .unwrap();
    let (mut state, stop) = start_client(
        control_plane.addr,
        client::node("node-1", &["m/web".to_owned()]),
    );
    let has = |state: &XdsState, port: i32| {
        names_of(&state.resources, CLUSTER).contains(&&mesh_xds::names::cluster("m", "a", port))
    };
    wait_for(&mut state, |s| has(s, 8080)).await;

    write("vn-a.json", node("a", 9090, serde_json::json!([])));
    wait_for(&mut state, |s| has(s, 9090) && !has(s, 8080)).await;

    // A port out of range: refused, the client keeps what it has.
    write("vn-a.json", node("a", 70_000, serde_json::json!([])));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(has(&state.borrow(), 9090));
    assert!(state.borrow().nacks.is_empty());

    write("vn-a.json", node("a", 9191, serde_json::json!([])));
    wait_for(&mut state, |s| has(s, 9191)).await;
    // Without its virtual service, nothing routes to `a`: its cluster goes.
    std::fs::remove_file(dir.path().join("vs-a.json")).unwrap();
    wait_for(&mut state, |s| !has(s, 9191)).await;

    stop.cancel();
    control_plane.stop().await.unwrap();
}
