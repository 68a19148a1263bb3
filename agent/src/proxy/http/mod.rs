//! HTTP, HTTP/2 and gRPC through the mesh: each request is routed by the listener's route
//! table (virtual host by Host/:authority, then the first matching route), sent to a weighted
//! target cluster, retried and timed out as the route says, and counted per service.
//!
//! The engine serves both peers; which listener took the connection is data it is given
//! ([`Side`]): the reporter label, whose virtual node it is, whether requests enter the mesh
//! here, and where a route's clusters are.
mod body;
mod exchange;
mod forward;
mod headers;
mod idle;
mod last_response;
mod local_reply;
mod upgrade;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds::{
    names,
    plan::{HttpPlan, cluster::Discovery, route::RequestView},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use exchange::{CountedBody, Exchange};
use headers::{authority, ensure_request_id, is_grpc};
use idle::{ParkableIo, ParkedGauge, Parking};
use local_reply::LocalReply;

use super::ProxyInputs;
use crate::{
    dataplane::{
        DataPlane, MeshState,
        upstream::{Body, Upstream},
    },
    telemetry::{
        access_log::{Loggers, ResponseFlags},
        lock_poisoned,
        metrics::{MeshMetrics, RequestOutcome, RouteLabels, RouteRecorder},
        trace::{SpanKind, Tracer},
    },
    tls::stream::MaybeTls,
};

/// Where a route's target cluster is found: the data plane's clusters (outbound), or a
/// captured pod's clusters toward its application (inbound).
pub trait Upstreams: Send + Sync {
    fn upstream(&self, plane: &DataPlane, cluster: &str) -> Option<Arc<Upstream>>;
}

/// The data plane's clusters, as outbound routes reach them.
pub struct MeshClusters;

impl Upstreams for MeshClusters {
    fn upstream(&self, plane: &DataPlane, cluster: &str) -> Option<Arc<Upstream>> {
        plane.clusters.get(cluster).cloned()
    }
}

/// Which listener took the connection, as the engine needs to know it.
pub struct Side {
    /// `outbound`, `inbound` or `gateway`: the `reporter` label of the request series.
    pub reporter: &'static str,
    /// The virtual node whose listener took the connection.
    pub virtual_node: String,
    /// Whether the virtual service the caller asked for is known here: outbound it is the
    /// host the request names; inbound, the caller's choice of service is not visible.
    pub knows_service: bool,
    /// Requests enter the mesh through this listener and get their `x-request-id` here.
    pub assigns_request_id: bool,
    /// The side of the call its spans record.
    pub span_kind: SpanKind,
    pub upstreams: Arc<dyn Upstreams>,
}

impl Side {
    /// From a workload of `virtual_node` to its backends.
    pub fn outbound(virtual_node: String, upstreams: Arc<dyn Upstreams>) -> Self {
        Self {
            reporter: "outbound",
            virtual_node,
            knows_service: true,
            assigns_request_id: true,
            span_kind: SpanKind::Client,
            upstreams,
        }
    }

    /// Into the mesh through virtual gateway `gateway` (`mesh/gateway/name`): its gateway
    /// routes, then the target virtual services' own routing.
    pub fn gateway(gateway: String, upstreams: Arc<dyn Upstreams>) -> Self {
        Self {
            reporter: "gateway",
            virtual_node: gateway,
            knows_service: true,
            assigns_request_id: true,
            span_kind: SpanKind::Server,
            upstreams,
        }
    }

    /// Into a captured pod of `virtual_node`, toward its application.
    pub fn inbound(virtual_node: String, upstreams: Arc<dyn Upstreams>) -> Self {
        Self {
            reporter: "inbound",
            virtual_node,
            knows_service: false,
            assigns_request_id: false,
            span_kind: SpanKind::Server,
            upstreams,
        }
    }
}

/// How many series a connection keeps at hand: the targets of a weighted route, or of a
/// few routes, without a lookup in the families per request.
const RECORDERS_CACHED: usize = 4;

/// One HTTP connection through a listener of the mesh.
pub struct HttpContext {
    state: MeshState,
    metrics: MeshMetrics,
    side: Side,
    /// The caller's virtual node as its certificate names it (`unknown` without one).
    source: String,
    port: u16,
    /// The route table of the listener.
    routes: String,
    /// WebSocket upgrades may pass this listener.
    websocket: bool,
    /// Fired when the drain begins: the connection is asked to end (GOAWAY, or closing
    /// after the request in flight).
    drain: CancellationToken,
    /// Fired when the drain period ends: upgraded connections are cut with the rest.
    cut: CancellationToken,
    /// The client, and the address it connected to (its original destination).
    peer: SocketAddr,
    local: SocketAddr,
    loggers: Option<Loggers>,
    tracer: Option<Arc<Tracer>>,
    /// The series of the routes this connection's requests last took (a weighted route's
    /// targets are one series each), the most recent last.
    recorders: Mutex<Vec<RouteRecorder>>,
}

impl HttpContext {
    pub fn new(
        inputs: &ProxyInputs,
        side: Side,
        source: String,
        port: u16,
        plan: &HttpPlan,
    ) -> Self {
        Self {
            state: inputs.state.clone(),
            metrics: inputs.mesh_metrics.clone(),
            side,
            source,
            port,
            routes: plan.routes.clone(),
            websocket: plan.websocket,
            drain: inputs.drain.clone(),
            cut: inputs.cut.clone(),
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            loggers: inputs.access_logs.loggers(&plan.access_logs),
            tracer: inputs.tracer.clone(),
            recorders: Mutex::default(),
        }
    }

    /// The connection's client and the address it connected to.
    pub fn between(mut self, peer: SocketAddr, local: SocketAddr) -> Self {
        self.peer = peer;
        self.local = local;
        self
    }

    /// The virtual node whose listener took the connection.
    fn virtual_node(&self) -> &str {
        &self.side.virtual_node
    }

    /// Counts a finished request, through the connection's cached series when it took a
    /// route (and target) one of its last requests took.
    fn record(&self, labels: &RouteLabels, outcome: RequestOutcome) {
        let Ok(mut cached) = self.recorders.lock() else {
            // Not counted rather than counted against the wrong series.
            static REPORTED: AtomicBool = AtomicBool::new(false);
            lock_poisoned(&REPORTED, "the request series cache lock");
            return;
        };
        match cached.iter_mut().rev().find(|r| r.labels() == labels) {
            Some(recorder) => recorder.record(&self.metrics, outcome),
            None => {
                if cached.len() == RECORDERS_CACHED {
                    cached.remove(0);
                }
                let mut recorder = self.metrics.recorder(labels);
                recorder.record(&self.metrics, outcome);
                cached.push(recorder);
            }
        }
    }

    /// Labels of a request no route took (yet).
    fn unrouted(&self, service: &str) -> RouteLabels {
        RouteLabels {
            reporter: self.side.reporter,
            source_virtual_node: self.source.clone(),
            destination_virtual_service: service.to_owned(),
            destination_virtual_node: "unknown".into(),
            route: "unknown".into(),
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(request.headers());
        let (mut parts, body) = request.into_parts();
        if self.side.assigns_request_id {
            ensure_request_id(&mut parts.headers);
        }
        let authority = authority(&parts).to_ascii_lowercase();
        let span = self
            .tracer
            .as_ref()
            .and_then(|tracer| tracer.begin(&mut parts.headers));
        let unrouted = self.unrouted("unknown");
        let mut exchange =
            Exchange::start(Arc::clone(&self), unrouted, &parts, &authority, grpc, span);
        let body = exchange.count_request(body);
        let routed = match self.refused_upgrade(&parts) {
            Some(refused) => Err(refused),
            None => self.route(&mut exchange, parts, body, &authority).await,
        };
        let response = match routed {
            Ok(response) => response,
            Err(reply) => {
                exchange.flags.insert(reply.flag);
                reply.into_response(grpc)
            }
        };
        exchange.respond(response)
    }

    /// A reply refusing the request's upgrade when the listener does not allow it (Envoy
    /// answers 403 to upgrades its `upgrade_configs` do not name).
    fn refused_upgrade(&self, parts: &http::request::Parts) -> Option<LocalReply> {
        let protocol = upgrade::requested(parts)?;
        if self.websocket && protocol.as_bytes().eq_ignore_ascii_case(b"websocket") {
            return None;
        }
        Some(LocalReply::new(
            StatusCode::FORBIDDEN,
            format!(
                "upgrade to {:?} is not allowed on this listener",
                String::from_utf8_lossy(protocol.as_bytes())
            ),
            ResponseFlags::default(),
        ))
    }

    /// Picks the virtual host, route and cluster of the listener's table, and forwards.
    async fn route(
        &self,
        exchange: &mut Exchange,
        parts: http::request::Parts,
        body: CountedBody,
        authority: &str,
    ) -> Result<Response<Body>, LocalReply> {
        self.route_in(
            &self.routes,
            exchange,
            parts,
            body,
            authority.to_owned(),
            true,
        )
        .await
    }

    /// Routes by `table`; a route to an internal listener (a gateway's second table) goes on
    /// through that listener's table, once (`may_enter_internal`).
    fn route_in<'a>(
        &'a self,
        table: &'a str,
        exchange: &'a mut Exchange,
        parts: http::request::Parts,
        body: CountedBody,
        authority: String,
        may_enter_internal: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Body>, LocalReply>> + Send + 'a>> {
        Box::pin(async move {
            let Ok(plane) = self.state.current() else {
                return Err(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the data plane cannot be read (its lock is poisoned)",
                    ResponseFlags::NO_ROUTE,
                ));
            };
            let Some(routes) = plane.routes.get(table) else {
                return Err(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("route table {table} is not loaded yet"),
                    ResponseFlags::NO_ROUTE,
                ));
            };
            let Some(host) = routes.virtual_host(&authority) else {
                return Err(LocalReply::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no virtual service {authority:?} among the backends of {} on port {}",
                        self.source, self.port
                    ),
                    ResponseFlags::NO_ROUTE,
                ));
            };
            // A gateway's own table is not a virtual service: its requests have none yet.
            let gateway_table = names::gateway_of_ingress(&host.name).is_some();
            let service = match gateway_table {
                true => "unknown".to_owned(),
                false => host.name.split(':').next().unwrap_or(&host.name).to_owned(),
            };
            exchange.labels = self.unrouted(&service);
            let view = RequestView {
                method: parts.method.as_str(),
                scheme: parts.uri.scheme_str().unwrap_or("http"),
                authority: &authority,
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
            };
            // The gateway's own table names no service yet: its replies say none.
            let with_service = |mut reply: LocalReply| {
                reply.service = (!gateway_table).then(|| service.clone());
                reply
            };
            let Some(route) = host.route(&view) else {
                return Err(with_service(LocalReply::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no route of {} matches {} {}",
                        match gateway_table {
                            true => format!("virtual gateway {}", self.side.virtual_node),
                            false => format!("virtual service {service}"),
                        },
                        parts.method,
                        parts.uri.path()
                    ),
                    ResponseFlags::NO_ROUTE,
                )));
            };
            let clusters = &route.action.clusters;
            let cluster = clusters.pick(rand::random_range(0..clusters.total()));
            let Some(upstream) = self.side.upstreams.upstream(&plane, cluster) else {
                return Err(with_service(LocalReply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "route {} targets cluster {cluster}, which is not loaded",
                        route.name
                    ),
                    ResponseFlags::NO_CLUSTER,
                )));
            };
            if let Discovery::InternalListener(listener) = &upstream.plan.discovery {
                let Some(internal) = plane.internal.get(listener).filter(|_| may_enter_internal)
                else {
                    return Err(with_service(LocalReply::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "route {} targets internal listener {listener}, which is not loaded (or is reached from an internal listener)",
                            route.name
                        ),
                        ResponseFlags::NO_CLUSTER,
                    )));
                };
                let mut parts = parts;
                let authority = forward::rewrite_for_internal(&mut parts, route)?;
                let internal_table = internal.routes.clone();
                drop(plane);
                return self
                    .route_in(&internal_table, exchange, parts, body, authority, false)
                    .await;
            }
            exchange.labels = RouteLabels {
                reporter: self.side.reporter,
                source_virtual_node: self.source.clone(),
                destination_virtual_service: match self.side.knows_service {
                    true => service.clone(),
                    false => "unknown".into(),
                },
                destination_virtual_node: upstream.virtual_node().to_owned(),
                route: route.name.clone(),
            };
            if self.loggers.is_some() || exchange.traced() {
                exchange.upstream_cluster = Some(upstream.name().to_owned());
            }
            forward::forward(self, exchange, parts, body, route, &upstream)
                .await
                .map_err(|reply| {
                    warn!(source = %self.source, route = %route.name, cluster = %upstream.name(), status = %reply.status, reason = %reply.reason, "request failed");
                    with_service(reply)
                })
        })
    }
}

/// Serves the connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it ends or the
/// drain cuts it. An idle HTTP/1.1 connection is parked between requests (idle.rs).
pub async fn serve(client: MaybeTls, context: Arc<HttpContext>) {
    let parking = Arc::new(Parking::default());
    let mut client = client;
    loop {
        // Boxed: hyper's connection is large; the task keeps only this loop's small state
        // while the connection is parked.
        let Some(parked) = Box::pin(serve_until_parked(client, &context, &parking)).await else {
            return;
        };
        let _counted = ParkedGauge::count(context.metrics.parked_connections());
        tokio::select! {
            readable = parked.tcp().readable() => {
                if readable.is_err() {
                    return;
                }
            }
            () = context.drain.cancelled() => return,
            () = context.cut.cancelled() => return,
        }
        client = parked;
    }
}

/// Serves requests until the connection ends (None) or, idle, is parked (its socket).
async fn serve_until_parked(
    client: MaybeTls,
    context: &Arc<HttpContext>,
    parking: &Arc<Parking>,
) -> Option<MaybeTls> {
    let (drain, cut) = (context.drain.clone(), context.cut.clone());
    let served = Arc::new(AtomicBool::new(false));
    let first_request = Arc::clone(&served);
    // The client's socket, for the last response's cork (last_response.rs). It lives as
    // long as `connection`, which alone calls the service.
    let socket = client.tcp().as_raw_fd();
    let (context, requests) = (Arc::clone(context), Arc::clone(parking));
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        first_request.store(true, Ordering::Relaxed);
        let context = Arc::clone(&context);
        let in_flight = requests.begin(request.version());
        if last_response::is_last_request(&request) {
            request
                .extensions_mut()
                .insert(last_response::CorkAtEnd(socket));
        }
        // Boxed: a request's state machine is large, and hyper moves the service future
        // into its per-stream task; a box moves as a pointer (12% of the proxy's CPU went to
        // memmove before).
        Box::pin(async move {
            let response = context.handle(request).await;
            Ok::<_, Infallible>(in_flight.carried_by(response))
        })
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let io = ParkableIo::new(client, Arc::clone(parking));
    // With upgrades: a 101 hands the connection to the upgrade's join instead of closing it.
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // Serving, then (drain) a grace period, then shut down.
    let (mut draining, mut shut_down) = (false, false);
    // A connection accepted just before the drain has its first request on the way (in the
    // socket, not yet parsed); shut down at once, hyper would take it for idle and close it
    // unanswered. It gets a moment to start that request first.
    let grace = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => parking.take_parked(),
                    // Whatever ended it (a half-read request among others), the socket is
                    // not served again.
                    Err(error) => {
                        debug!(%error, "HTTP connection ended with an error");
                        None
                    }
                };
            }
            () = drain.cancelled(), if !draining => {
                draining = true;
                let wait = match served.load(Ordering::Relaxed) {
                    true => Duration::ZERO,
                    false => FIRST_REQUEST_GRACE,
                };
                grace.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            // HTTP/2: GOAWAY (RFC 9113 §6.8), streams in flight finish; HTTP/1.1: the
            // response in flight says `connection: close`, then the connection ends.
            () = &mut grace, if draining && !shut_down => {
                shut_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = cut.cancelled() => return None,
        }
    }
}

/// How long a connection that has not started a request yet may still start one once the
/// drain begins.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(200);
