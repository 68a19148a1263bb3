//! One test mesh in process: App Mesh definitions compiled by the control plane into the xDS
//! resources, applied to the agent's data plane, the real outbound proxy on loopback with a
//! fixed original destination, and loopback HTTP servers as the virtual nodes' endpoints.
//!
//! The mesh is the one of tests/e2e/l7.rs: mesh `m`, virtual node `client` (the workload
//! every proxied connection comes from) with backend `api.m.local`, provided by router `api`
//! whose routes the test gives, over virtual nodes `v1` and `v2`. Endpoints come from the
//! registry (Cloud Map), each server on an address of 127/8 of its own, so tests running in
//! parallel never share one.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use control_plane::{
    InputOptions,
    compile::{self, MeshIndex},
    registry::{self, Registry},
};
use envoy_types::pb::{
    envoy::config::cluster::v3::Cluster, google::protobuf::Duration as PbDuration,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_agent::{
    dataplane::{
        self, MeshState, UpstreamSettings, dns::Resolver, metrics::EndpointCollector,
        workloads::Workload,
    },
    listen::bind_listener,
    proxy::{ProxyInputs, ProxySettings, outbound::Outbound},
    redirect::orig_dst::{OrigDstError, OrigDstSource, Redirected},
    telemetry::metrics::Metrics,
};
use mesh_xds::{client::XdsState, resources::CLUSTER};
use prost::Message;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use tests::mesh::{PORT, SERVICE, all_to_v1, all_to_v1_over_http2, route, route_of_kind};
/// What the client "connected to" for `api.m.local` (never reached: the proxy routes).
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 200, 1);
/// The workload id the fixed original-destination source gives every connection.
const CLIENT_WORKLOAD: u32 = 7;

/// How long live connections may finish once a test starts the drain.
const DRAIN_PERIOD: Duration = Duration::from_secs(5);

/// Generous bound for anything that should be quick.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback address no other server of this test process uses (and, by its second octet
/// taken from the process id, most likely none of another run at the same time).
pub fn unique_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let run = 10 + std::process::id() % 200;
    Ipv4Addr::new(127, run as u8, (n / 250) as u8, (n % 250 + 1) as u8)
}

// ---------------------------------------------------------------------------------------
// The mesh definition.

/// How one endpoint behaves.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Answers name it (`x-served-by`, and the body).
    pub name: &'static str,
    /// The first this many requests are answered 503.
    pub fail_first: usize,
    /// Registered but nobody listens: connects are refused.
    pub dead: bool,
}

impl ServerSpec {
    pub fn named(name: &'static str) -> Self {
        Self {
            name,
            fail_first: 0,
            dead: false,
        }
    }

    pub fn failing_first(mut self, count: usize) -> Self {
        self.fail_first = count;
        self
    }

    pub fn dead(name: &'static str) -> Self {
        Self {
            dead: true,
            ..Self::named(name)
        }
    }
}

pub struct Spec {
    /// Changes the compiled resources before the proxy gets them (e.g. to go below App
    /// Mesh's minimum health-check interval).
    pub tweak: Option<fn(&mut XdsState)>,
    pub egress: &'static str,
    /// Protocol of v1's, v2's and the router's listeners.
    pub protocol: &'static str,
    pub routes: Vec<Value>,
    /// Extra listener fields of v1 and v2 (outlierDetection, healthCheck, connectionPool).
    pub listener_extra: Value,
    pub router_ports: &'static [u16],
    /// The endpoints of v1 and of v2.
    pub v1: Vec<ServerSpec>,
    pub v2: Vec<ServerSpec>,
}

impl Spec {
    /// HTTP/2 listeners, every request to v1.
    pub fn http2_to_v1() -> Self {
        Self {
            protocol: "http2",
            routes: all_to_v1_over_http2(),
            ..Self::default()
        }
    }
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            tweak: None,
            egress: "DROP_ALL",
            protocol: "http",
            routes: Vec::new(),
            listener_extra: json!({}),
            router_ports: &[PORT],
            v1: vec![ServerSpec::named("v1")],
            v2: vec![ServerSpec::named("v2")],
        }
    }
}

/// The App Mesh definition files of `spec`, by name.
fn definitions(spec: &Spec) -> BTreeMap<String, Value> {
    let mut files = BTreeMap::new();
    files.insert(
        "mesh".into(),
        json!({"meshName": "m", "spec": {"egressFilter": {"type": spec.egress}}}),
    );
    let cloud_map = |service: &str| json!({"awsCloudMap": {"namespaceName": "m.local", "serviceName": service}});
    files.insert(
        "vn-client".into(),
        json!({"meshName": "m", "virtualNodeName": "client", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
            "serviceDiscovery": cloud_map("client"),
            "backends": [{"virtualService": {"virtualServiceName": SERVICE}}]}}),
    );
    for name in ["v1", "v2"] {
        let mut listener = json!({"portMapping": {"port": PORT, "protocol": spec.protocol}});
        if let (Some(l), Some(extra)) = (listener.as_object_mut(), spec.listener_extra.as_object())
        {
            l.extend(extra.clone());
        }
        files.insert(
            format!("vn-{name}"),
            json!({"meshName": "m", "virtualNodeName": name, "spec": {
                "listeners": [listener],
                "serviceDiscovery": cloud_map(name)}}),
        );
    }
    files.insert(
        "vr".into(),
        json!({"meshName": "m", "virtualRouterName": "api", "spec": {"listeners": spec.router_ports.iter().map(|port| json!({"portMapping": {"port": port, "protocol": spec.protocol}})).collect::<Vec<_>>()}}),
    );
    files.insert(
        "vs".into(),
        json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "api"}}}}),
    );
    for (index, route) in spec.routes.iter().enumerate() {
        files.insert(format!("route-{index}"), route.clone());
    }
    files
}

/// Loads, validates and indexes the definitions in `dir`.
pub fn index_of(dir: &std::path::Path) -> MeshIndex {
    let (resources, diagnostics) = control_plane::load(&[dir.to_owned()], &InputOptions::default());
    assert!(diagnostics.is_empty(), "{diagnostics:#?}");
    MeshIndex::new(&resources).expect("the mesh indexes")
}

/// The xDS resources of every virtual node of `index`, endpoints from `registry`.
pub fn compile_state(index: &MeshIndex, registry: &Registry) -> XdsState {
    let compiled = compile::compile(index, registry, &compile::Workloads::All);
    assert!(compiled.issues.is_empty(), "{:?}", compiled.issues);
    XdsState {
        resources: compiled.resources,
        ..XdsState::default()
    }
}

/// Sets every compiled cluster's health checks to `interval` and `timeout` (App Mesh's
/// minimums are 5 s and 2 s: too slow for a test of what the data plane does with them).
pub fn health_check_timing(state: &mut XdsState, interval: Duration, timeout: Duration) {
    let duration = |d: Duration| PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    };
    for any in state
        .resources
        .by_type
        .get_mut(CLUSTER)
        .into_iter()
        .flat_map(|clusters| Arc::make_mut(clusters).values_mut())
    {
        let mut cluster = Cluster::decode(any.value.as_slice()).expect("a cluster");
        for check in &mut cluster.health_checks {
            check.interval = Some(duration(interval));
            check.timeout = Some(duration(timeout));
        }
        any.value = cluster.encode_to_vec();
    }
}

// ---------------------------------------------------------------------------------------
// The proxy and its data plane.

/// Every connection "was redirected" from `destination` by the client workload.
struct FixedOrigDst(SocketAddrV4);

impl OrigDstSource for FixedOrigDst {
    fn original_destination(
        &self,
        _peer: SocketAddrV4,
    ) -> Result<Option<Redirected>, OrigDstError> {
        Ok(Some(Redirected {
            destination: self.0,
            workload_id: CLIENT_WORKLOAD,
        }))
    }
}

/// The proxy's side of a test: data plane, metrics, listeners.
pub struct Proxy {
    pub state: MeshState,
    pub metrics: Arc<Metrics>,
    inputs: ProxyInputs,
    xds: watch::Sender<Arc<XdsState>>,
    stop: CancellationToken,
}

impl Proxy {
    /// The data plane following `initial` (send more with [`Proxy::apply`]), the client
    /// workload pinned to `virtual_node` (`mesh/node`).
    pub async fn start(initial: XdsState, virtual_node: &str) -> Self {
        let state = MeshState::default();
        let mut metrics = Metrics::default();
        metrics.register_collector(Box::new(EndpointCollector(state.clone())));
        let metrics = Arc::new(metrics);
        let inputs = ProxyInputs {
            state: state.clone(),
            metrics: metrics.proxy.clone(),
            mesh_metrics: metrics.mesh.clone(),
            access_logs: metrics.access_logs.clone(),
            ..ProxyInputs::new(
                ProxySettings {
                    mark: None,
                    connect_timeout: Duration::from_secs(2),
                },
                metrics.proxy.clone(),
            )
        };
        inputs.workloads.insert(
            CLIENT_WORKLOAD,
            Workload {
                netns: "client".into(),
                virtual_node: Some(virtual_node.into()),
                addresses: vec![Ipv4Addr::LOCALHOST],
            },
        );
        let stop = CancellationToken::new();
        let (xds, watch_rx) = watch::channel(Arc::new(XdsState::default()));
        tokio::spawn(dataplane::follow(
            watch_rx,
            state.clone(),
            UpstreamSettings {
                mark: None,
                metrics: metrics.mesh.clone(),
                resolver: Resolver::hosts_only(),
                tls: inputs.tls.clone(),
            },
            stop.clone(),
        ));
        tokio::spawn(inputs.tls.clone().follow_files(stop.clone()));
        let proxy = Self {
            state,
            metrics,
            inputs,
            xds,
            stop,
        };
        proxy.apply(initial).await;
        proxy
    }

    /// Starts the drain, as the agent does on SIGTERM: the listeners stop accepting,
    /// HTTP/2 connections get a GOAWAY, HTTP/1.1 ones close after the response in flight.
    pub fn drain(&self) {
        self.inputs.drain.cancel();
    }

    /// Hands `next` to the data plane and waits until it is applied.
    pub async fn apply(&self, next: XdsState) {
        let mut applied = self.state.subscribe();
        applied.borrow_and_update();
        self.xds.send_replace(Arc::new(next));
        tokio::time::timeout(TIMEOUT, applied.changed())
            .await
            .expect("the data plane applies the state in time")
            .expect("the data plane follows");
    }

    /// A new outbound listener whose every connection was redirected from `destination`.
    pub fn listen_for(&self, destination: SocketAddrV4) -> SocketAddr {
        let listener = bind_listener("test outbound", "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let outbound = Outbound::new(
            listener,
            Arc::new(FixedOrigDst(destination)),
            self.inputs.clone(),
        );
        // A drain period longer than any request a test keeps in flight through a drain.
        tokio::spawn(outbound.run(DRAIN_PERIOD));
        addr
    }

    /// The metrics exposition.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode().expect("metrics encode")
    }

    /// The value of one sample (`name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics_text(), sample)
    }

    /// `mesh_upstream_endpoints{state="available"}` of `cluster`.
    pub fn available(&self, cluster: &str) -> f64 {
        self.metric(&format!(
            "mesh_upstream_endpoints{{cluster=\"{cluster}\",state=\"available\"}}"
        ))
    }

    /// Waits until `cluster` has `want` available endpoints.
    pub async fn wait_until_available(&self, cluster: &str, want: f64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.available(cluster) != want {
            assert!(
                Instant::now() < deadline,
                "{cluster}: available endpoints not {want} within {within:?}:\n{}",
                self.metrics_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.inputs.drain.cancel();
    }
}

pub fn metric_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `mesh_requests_total` sample of the client's requests to `node` by `route`.
pub fn requests_sample(node: &str, route: &str, code: u16, grpc_status: &str) -> String {
    format!(
        r#"mesh_requests_total{{reporter="outbound",source_virtual_node="m/client",destination_virtual_service="{SERVICE}",destination_virtual_node="m/{node}",route="{route}",response_code="{code}",grpc_status="{grpc_status}"}}"#
    )
}

/// The `mesh_request_retries_total` sample of the client's requests to `node` by `route`.
pub fn retries_sample(node: &str, route: &str) -> String {
    format!(
        r#"mesh_request_retries_total{{reporter="outbound",source_virtual_node="m/client",destination_virtual_service="{SERVICE}",destination_virtual_node="m/{node}",route="{route}"}}"#
    )
}

// ---------------------------------------------------------------------------------------
// The whole test mesh.

pub struct Mesh {
    pub proxy: Proxy,
    /// Servers by name (`v1`, `v2`, and whatever else the spec named).
    pub servers: BTreeMap<&'static str, Server>,
    /// Proxy listeners by the service port they stand for.
    listeners: BTreeMap<u16, SocketAddr>,
    _definitions: tempfile::TempDir,
}

impl Mesh {
    pub async fn start(spec: Spec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in definitions(&spec) {
            std::fs::write(dir.path().join(format!("{name}.json")), value.to_string()).unwrap();
        }
        let mut servers = BTreeMap::new();
        let mut registry = Registry::default();
        for (service, endpoints) in [("v1", &spec.v1), ("v2", &spec.v2)] {
            for server_spec in endpoints {
                let server = Server::start(server_spec.clone(), unique_ip()).await;
                register(&mut registry, service, &server);
                servers.insert(server_spec.name, server);
            }
        }
        let mut state = compile_state(&index_of(dir.path()), &registry);
        if let Some(tweak) = spec.tweak {
            tweak(&mut state);
        }
        let proxy = Proxy::start(state, "m/client").await;
        let listeners = spec
            .router_ports
            .iter()
            .map(|port| {
                (
                    *port,
                    proxy.listen_for(SocketAddrV4::new(SERVICE_VIP, *port)),
                )
            })
            .collect();
        Self {
            proxy,
            servers,
            listeners,
            _definitions: dir,
        }
    }

    pub fn server(&self, name: &str) -> &Server {
        self.servers
            .get(name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// The proxy listener standing for `api.m.local:port`.
    pub fn listener(&self, port: u16) -> SocketAddr {
        self.listeners[&port]
    }

    /// A request to `http://api.m.local:8080{path}`.
    pub fn get(&self, path: &str) -> http::request::Builder {
        request_to(SERVICE, PORT, "GET", path)
    }

    /// Sends `request` to the proxy listener of port 8080 on a connection of its own.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        send_http1(self.listener(PORT), request).await
    }

    /// GET `path` with `headers`; which server answered (panics unless 200).
    pub async fn served_by(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let mut request = self.get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let reply = self.send(request.body(Full::default()).unwrap()).await;
        assert_eq!(reply.status, 200, "{path} {headers:?}: {reply:?}");
        reply.served_by().to_owned()
    }
}

/// Adds `server` to the registry as an instance of `service` (Cloud Map namespace m.local).
pub fn register(registry: &mut Registry, service: &str, server: &Server) {
    let attributes = [
        (registry::IPV4.to_owned(), server.addr.ip().to_string()),
        (registry::PORT.to_owned(), server.addr.port().to_string()),
    ]
    .into();
    registry
        .register("m.local", service, server.name, attributes)
        .expect("a valid instance");
}

// ---------------------------------------------------------------------------------------
// Clients.

/// An answer as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    /// The body ended in an error (the proxy cut the response).
    pub body_error: Option<String>,
}

impl Reply {
    /// The server that answered (`x-served-by`), or "" for a local reply of the proxy.
    pub fn served_by(&self) -> &str {
        self.header("x-served-by")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// A request builder for `http://host:port{path}` (HTTP/1.1 sends it as origin form with a
/// Host header).
pub fn request_to(host: &str, port: u16, method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"))
}

/// Sends one request on a new HTTP/1.1 connection to `addr`.
pub async fn send_http1(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    let mut connection = Http1::connect(addr).await;
    connection.send(request).await
}

async fn read_reply(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let (body, body_error) = match body.collect().await {
        Ok(collected) => (
            String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            None,
        ),
        Err(error) => (String::new(), Some(format!("{error:?}"))),
    };
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        body_error,
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http1(pub hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        Self(sender)
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        self.0.ready().await.expect("connection ready");
        let response = tokio::time::timeout(TIMEOUT, self.0.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an HTTP answer");
        read_reply(response).await
    }
}

/// One HTTP/2 connection (prior knowledge); cheap to clone, requests multiplex.
#[derive(Clone)]
pub struct Http2(pub hyper::client::conn::http2::SendRequest<Full<Bytes>>);

impl Http2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        Self(sender)
    }

    /// `request`'s URI must be absolute (it carries :authority).
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        self.0.ready().await.expect("connection ready");
        let response = tokio::time::timeout(TIMEOUT, self.0.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an HTTP/2 answer");
        read_reply(response).await
    }
}

// ---------------------------------------------------------------------------------------
// Servers.

/// A loopback HTTP/1.1 and HTTP/2 (prior knowledge) server answering as its name:
/// `x-served-by: NAME` and `hello from NAME path=PATH`. Request headers steer it:
/// `x-status` (the status), `x-delay-ms` (before the headers), `x-body-delay-ms` (between
/// headers and body), `x-body-reset` (the body fails after its first part: a reset),
/// `x-grpc-status` (for gRPC requests, trailers-only). It echoes
/// `x-request-id` and `traceparent` as `x-echo-*`, the names of the request headers it got
/// as `x-echo-header-names` (and of its trailers as `x-echo-trailer-names`), its TE header
/// as `x-echo-te`, and the request body's length as `x-body-length`. `/health` answers 200
/// while it is healthy, else 503.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

struct Counters {
    name: &'static str,
    /// Requests other than health checks.
    hits: AtomicUsize,
    health_checks: AtomicUsize,
    fail_first: AtomicUsize,
    healthy: AtomicBool,
}

impl Server {
    /// Starts serving `spec` on `ip` (a free port), or only reserves the address when it is
    /// dead.
    pub async fn start(spec: ServerSpec, ip: Ipv4Addr) -> Self {
        Self::start_with(spec, listen(SocketAddr::from((ip, 0))))
    }

    /// [`Server::start`] on `port` of an address of its own (one where that port is free:
    /// another test run may hold it).
    pub async fn start_on_port(spec: ServerSpec, port: u16) -> Self {
        for _ in 0..100 {
            if let Ok(listener) = try_listen(SocketAddr::from((unique_ip(), port))) {
                return Self::start_with(spec, listener);
            }
        }
        panic!("no loopback address with port {port} free");
    }

    fn start_with(spec: ServerSpec, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let dead = spec.dead;
        let counters = Arc::new(Counters {
            name: spec.name,
            hits: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            fail_first: AtomicUsize::new(spec.fail_first),
            healthy: AtomicBool::new(true),
        });
        let server = Self {
            name: spec.name,
            addr,
            counters,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        if dead {
            // Closed again: nothing listens on this address of our own.
            drop(listener);
        } else {
            server.serve(listener);
        }
        server
    }

    /// Listens again on the same address after [`Server::kill`].
    pub fn revive(&mut self) {
        self.stop = CancellationToken::new();
        self.tracker = TaskTracker::new();
        self.serve(listen(self.addr));
    }

    fn serve(&self, listener: TcpListener) {
        let counters = Arc::clone(&self.counters);
        let stop = self.stop.clone();
        let tracker = self.tracker.clone();
        self.tracker.spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = stop.cancelled() => return,
                };
                let counters = Arc::clone(&counters);
                let stop = stop.clone();
                tracker.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let counters = Arc::clone(&counters);
                        async move { Ok::<_, Infallible>(answer(&counters, request).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
    }

    /// Stops listening and closes every connection (the endpoint died).
    pub async fn kill(&self) {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(TIMEOUT, self.tracker.wait())
            .await
            .expect("server stops");
    }

    /// Requests served (health checks not counted).
    pub fn hits(&self) -> usize {
        self.counters.hits.load(Ordering::Relaxed)
    }

    pub fn health_checks(&self) -> usize {
        self.counters.health_checks.load(Ordering::Relaxed)
    }

    /// What `/health` answers from now on.
    pub fn set_healthy(&self, healthy: bool) {
        self.counters.healthy.store(healthy, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn listen(addr: SocketAddr) -> TcpListener {
    try_listen(addr).expect("listen on a loopback address")
}

fn try_listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

type ServerBody = BoxBody<Bytes, std::io::Error>;

fn header_number(request: &Request<Incoming>, name: &str) -> Option<u64> {
    request.headers().get(name)?.to_str().ok()?.parse().ok()
}

async fn answer(counters: &Counters, request: Request<Incoming>) -> Response<ServerBody> {
    let path = request.uri().path().to_owned();
    let mut response = Response::builder().header("x-served-by", counters.name);
    if path == "/health" {
        counters.health_checks.fetch_add(1, Ordering::Relaxed);
        let status = match counters.healthy.load(Ordering::Relaxed) {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        return response.status(status).body(full("health")).unwrap();
    }
    counters.hits.fetch_add(1, Ordering::Relaxed);
    for (from, to) in [
        ("x-request-id", "x-echo-request-id"),
        ("traceparent", "x-echo-traceparent"),
    ] {
        if let Some(value) = request.headers().get(from) {
            response = response.header(to, value.clone());
        }
    }
    // What arrived, for the tests of the header rules: every request header's name.
    let mut names: Vec<&str> = request.headers().keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if let Ok(value) = HeaderValue::from_str(&names.join(",")) {
        response = response.header("x-echo-header-names", value);
    }
    if let Some(te) = request.headers().get(http::header::TE) {
        response = response.header("x-echo-te", te.clone());
    }
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let status = header_number(&request, "x-status").unwrap_or(200);
    let delay = header_number(&request, "x-delay-ms").map(Duration::from_millis);
    let body_delay = header_number(&request, "x-body-delay-ms").map(Duration::from_millis);
    let reset = request.headers().contains_key("x-body-reset");
    let grpc_status = request
        .headers()
        .get("x-grpc-status")
        .cloned()
        .unwrap_or(HeaderValue::from_static("0"));
    let (length, trailers) = match request.into_body().collect().await {
        Ok(body) => {
            let trailers = body.trailers().map(|t| {
                let mut names: Vec<&str> = t.keys().map(|n| n.as_str()).collect();
                names.sort_unstable();
                names.join(",")
            });
            (body.to_bytes().len(), trailers)
        }
        Err(_) => return response.status(400).body(full("")).unwrap(),
    };
    let mut response = response.header("x-body-length", length);
    if let Some(names) = trailers {
        response = response.header("x-echo-trailer-names", names);
    }
    let failing = counters
        .fail_first
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if failing {
        return response
            .status(503)
            .body(full("failing on purpose"))
            .unwrap();
    }
    if grpc {
        // Trailers-only: the status in the headers, no body.
        return response
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", grpc_status)
            .body(full(""))
            .unwrap();
    }
    let text = format!("hello from {} path={path}\n", counters.name);
    let body = match (body_delay, reset) {
        (None, false) => full(text),
        (delay, then_reset) => Delayed {
            sleep: Box::pin(tokio::time::sleep(delay.unwrap_or_default())),
            data: Some(Bytes::from(text)),
            then_reset,
        }
        .boxed(),
    };
    response.status(status as u16).body(body).unwrap()
}

fn full(text: impl Into<Bytes>) -> ServerBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body that arrives after a while, and then, when asked, fails: the server resets the
/// stream (HTTP/2 RST_STREAM) or the connection (HTTP/1.1) instead of ending it.
struct Delayed {
    sleep: Pin<Box<tokio::time::Sleep>>,
    data: Option<Bytes>,
    then_reset: bool,
}

impl hyper::body::Body for Delayed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.data.is_none() {
            if std::mem::take(&mut self.then_reset) {
                return Poll::Ready(Some(Err(std::io::Error::other("reset as asked"))));
            }
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(self.data.take().map(|data| Ok(Frame::data(data))))
    }
}

/// Runs `future`, returning how long it took.
pub async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = future.await;
    (value, started.elapsed())
}
