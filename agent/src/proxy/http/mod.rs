//! HTTP, HTTP/2 and gRPC through the mesh: each request is routed by the source virtual
//! node's route table for the destination port (virtual host by Host/:authority, then the
//! first matching route), sent to a weighted target cluster, retried and timed out as the
//! route says, and counted per service.
use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds::plan::route::{RequestView, RetryPolicy, Route};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    MeshContext,
    exchange::{CountedBody, Exchange, grpc_status},
    inbound::PodContext,
    upstream::{Body, BoxError, InFlight, Outcome, PickError, Upstream},
};
use crate::{
    access_log::{Loggers, ResponseFlags},
    metrics::{MeshMetrics, RequestOutcome, RouteLabels, RouteRecorder},
    state::MeshState,
};

/// Request bodies up to this size are kept so a retry can send them again; a longer body is
/// streamed and its request is not retried.
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;
/// Envoy's retry back-off: 25 ms base, doubling, jittered, at most 250 ms.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// One HTTP connection from a workload to a destination port.
pub struct HttpContext {
    pub state: MeshState,
    pub metrics: MeshMetrics,
    pub source: String,
    pub port: u16,
    pub routes: String,
    pub direction: Direction,
    /// The client, and the address it connected to (its original destination).
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub loggers: Option<Loggers>,
    /// The series of the route this connection's requests last took.
    pub recorder: Mutex<Option<RouteRecorder>>,
}

/// Which side of the proxy a request passes.
pub enum Direction {
    /// From a workload to its backends.
    Outbound,
    /// Into a captured pod, toward its application on loopback.
    Inbound {
        pod: Arc<PodContext>,
        virtual_node: String,
        mesh: Box<MeshContext>,
        mark: u32,
    },
}

/// Serves the connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it ends or `cut`.
pub async fn serve(client: TcpStream, context: Arc<HttpContext>, cut: CancellationToken) {
    let service = hyper::service::service_fn(move |request| {
        let context = Arc::clone(&context);
        // Boxed: a request's state machine is large, and hyper moves the service future
        // into its per-stream task; a box moves as a pointer (12% of the proxy's CPU went to
        // memmove before).
        Box::pin(async move { Ok::<_, Infallible>(context.handle(request).await) })
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(client), service);
    tokio::select! {
        result = connection => if let Err(error) = result {
            debug!(%error, "HTTP connection ended with an error");
        },
        () = cut.cancelled() => {}
    }
}

/// A reply the proxy makes itself: why, and the response flag it is logged with.
struct LocalReply {
    status: StatusCode,
    service: Option<String>,
    reason: String,
    flag: ResponseFlags,
}

impl LocalReply {
    fn new(status: StatusCode, reason: impl Into<String>, flag: ResponseFlags) -> Self {
        Self {
            status,
            service: None,
            reason: reason.into(),
            flag,
        }
    }
}

impl HttpContext {
    /// The virtual node whose listener took the connection.
    pub fn virtual_node(&self) -> &str {
        match &self.direction {
            Direction::Outbound => &self.source,
            Direction::Inbound { virtual_node, .. } => virtual_node,
        }
    }

    /// Counts a finished request, through the connection's cached series when it took the
    /// same route as the last one.
    pub fn record(&self, labels: &RouteLabels, outcome: RequestOutcome) {
        let Ok(mut cached) = self.recorder.lock() else {
            return;
        };
        match cached.as_mut() {
            Some(recorder) if recorder.labels() == labels => {
                recorder.record(&self.metrics, outcome);
            }
            _ => {
                let mut recorder = self.metrics.recorder(labels);
                recorder.record(&self.metrics, outcome);
                *cached = Some(recorder);
            }
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let grpc = is_grpc(request.headers());
        let (mut parts, body) = request.into_parts();
        if matches!(self.direction, Direction::Outbound) {
            ensure_request_id(&mut parts.headers);
        }
        let authority = authority(&parts).to_ascii_lowercase();
        let unrouted = RouteLabels::unrouted(&self.source, "unknown");
        let mut exchange = Exchange::start(Arc::clone(&self), unrouted, &parts, &authority, grpc);
        let body = exchange.count_request(body);
        let response = match self.route(&mut exchange, parts, body, &authority).await {
            Ok(response) => response,
            Err(reply) => {
                exchange.flags.insert(reply.flag);
                self.local(grpc, reply)
            }
        };
        exchange.respond(response)
    }

    /// Picks the virtual host, route and cluster, and forwards.
    async fn route(
        &self,
        exchange: &mut Exchange,
        parts: http::request::Parts,
        body: CountedBody,
        authority: &str,
    ) -> Result<Response<Body>, LocalReply> {
        let plane = self.state.current();
        let Some(table) = plane.routes.get(&self.routes) else {
            return Err(LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("route table {} is not loaded yet", self.routes),
                ResponseFlags::NO_ROUTE,
            ));
        };
        let Some(host) = table.virtual_host(authority) else {
            return Err(LocalReply::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no virtual service {authority:?} among the backends of {} on port {}",
                    self.source, self.port
                ),
                ResponseFlags::NO_ROUTE,
            ));
        };
        let service = host.name.split(':').next().unwrap_or(&host.name).to_owned();
        exchange.labels = RouteLabels::unrouted(&self.source, &service);
        let view = RequestView {
            method: parts.method.as_str(),
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            authority,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        let with_service = |mut reply: LocalReply| {
            reply.service = Some(service.clone());
            reply
        };
        let Some(route) = host.route(&view) else {
            return Err(with_service(LocalReply::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no route of virtual service {service} matches {} {}",
                    parts.method,
                    parts.uri.path()
                ),
                ResponseFlags::NO_ROUTE,
            )));
        };
        let clusters = &route.action.clusters;
        let cluster = clusters.pick(rand::random_range(0..clusters.total()));
        let upstream = match &self.direction {
            Direction::Outbound => plane.clusters.get(cluster).cloned(),
            Direction::Inbound {
                pod, mesh, mark, ..
            } => pod.local_upstream(&plane, cluster, self.port, mesh, *mark),
        };
        let Some(upstream) = upstream else {
            return Err(with_service(LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "route {} targets cluster {cluster}, which is not loaded",
                    route.name
                ),
                ResponseFlags::NO_CLUSTER,
            )));
        };
        exchange.labels = match &self.direction {
            Direction::Outbound => RouteLabels {
                reporter: "outbound",
                source_virtual_node: self.source.clone(),
                destination_virtual_service: service.clone(),
                destination_virtual_node: upstream.virtual_node.clone(),
                route: route.name.clone(),
            },
            // What the inbound side knows is its own virtual node: the service the caller
            // named is not visible here.
            Direction::Inbound { virtual_node, .. } => RouteLabels {
                reporter: "inbound",
                source_virtual_node: self.source.clone(),
                destination_virtual_service: "unknown".into(),
                destination_virtual_node: virtual_node.clone(),
                route: route.name.clone(),
            },
        };
        if self.loggers.is_some() {
            exchange.upstream_cluster = Some(upstream.name().to_owned());
        }
        self.forward(exchange, parts, body, route, &upstream)
            .await
            .map_err(|reply| {
                warn!(source = %self.source, route = %route.name, cluster = %upstream.name(), status = %reply.status, reason = %reply.reason, "request failed");
                with_service(reply)
            })
    }

    /// A reply the proxy makes: for gRPC callers a trailers-only response with the matching
    /// grpc-status (as Envoy does), else the status with the reason as text.
    fn local(&self, grpc: bool, reply: LocalReply) -> Response<Body> {
        let mut response = Response::new(full(format!("{}\n", reply.reason)));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        if let Some(service) = &reply.service
            && let Ok(value) = HeaderValue::from_str(service)
        {
            headers.insert("x-mesh-virtual-service", value);
        }
        if let Ok(value) = HeaderValue::from_str(&reply.reason) {
            headers.insert("x-mesh-reason", value.clone());
            if grpc {
                headers.insert("grpc-message", value);
            }
        }
        if grpc {
            let code = match reply.status {
                StatusCode::NOT_FOUND => "12",
                StatusCode::GATEWAY_TIMEOUT => "4",
                _ => "14",
            };
            *response.status_mut() = StatusCode::OK;
            *response.body_mut() = full(String::new());
            let headers = response.headers_mut();
            headers.insert("grpc-status", HeaderValue::from_static(code));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
        } else {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        response
    }

    /// Sends the request to `upstream`, retrying and timing out as the route says.
    async fn forward(
        &self,
        exchange: &mut Exchange,
        parts: http::request::Parts,
        body: CountedBody,
        route: &Route,
        upstream: &Arc<Upstream>,
    ) -> Result<Response<Body>, LocalReply> {
        if upstream.plan.upstream_tls {
            return Err(LocalReply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cluster {} requires upstream TLS, which this agent does not originate yet",
                    upstream.name()
                ),
                ResponseFlags::UPSTREAM_CONNECT_FAILURE,
            ));
        }
        let action = &route.action;
        let deadline = action.timeout.map(|t| Instant::now() + t);
        let mut body = match &action.retry {
            Some(_) => RequestBody::buffer(body).await.map_err(|e| {
                LocalReply::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                    ResponseFlags::DOWNSTREAM_TERMINATION,
                )
            })?,
            None => RequestBody::Streaming(Some(body)),
        };
        let target = UpstreamTarget::new(&parts, route, upstream);
        let mut retries = 0;
        let mut _retry_slot = None;
        loop {
            let per_try = per_try_budget(action.retry.as_ref(), deadline)?;
            let request = target.request(&parts, body.take())?;
            exchange.attempts += 1;
            let result = try_once(upstream, request, per_try, &mut exchange.upstream_host).await;
            let retry = action.retry.as_ref().filter(|policy| {
                retries < policy.num_retries && body.replayable() && result.retriable(policy)
            });
            let timed = |response: Response<Body>| {
                response.map(|body| TimedBody::wrap(body, deadline, action.idle_timeout))
            };
            if retry.is_none() {
                if retries > 0
                    && action
                        .retry
                        .as_ref()
                        .is_some_and(|policy| result.retriable(policy))
                {
                    exchange.flags.insert(ResponseFlags::RETRY_LIMIT_EXCEEDED);
                }
                return result
                    .into_response(upstream, deadline.is_some_and(|d| Instant::now() >= d))
                    .map(timed);
            }
            let Some(slot) = upstream.begin_retry() else {
                return result.into_response(upstream, false).map(timed);
            };
            _retry_slot = Some(slot);
            retries += 1;
            self.metrics.retried(&exchange.labels);
            debug!(route = %route.name, cluster = %upstream.name(), retries, outcome = %result.describe(), "retrying");
            tokio::time::sleep(backoff(retries)).await;
        }
    }
}

/// The time the next try may take: the per-try timeout, cut to what is left of the
/// request's timeout; an error once that is spent.
fn per_try_budget(
    retry: Option<&RetryPolicy>,
    deadline: Option<Instant>,
) -> Result<Option<Duration>, LocalReply> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if left.is_some_and(|l| l.is_zero()) {
        return Err(LocalReply::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout",
            ResponseFlags::UPSTREAM_TIMEOUT,
        ));
    }
    let per_try = retry.and_then(|r| r.per_try_timeout);
    Ok(match (per_try, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

fn backoff(retries: u32) -> Duration {
    let ceiling = RETRY_BACKOFF_BASE
        .saturating_mul(1 << retries.min(4))
        .min(RETRY_BACKOFF_MAX);
    ceiling.mul_f64(rand::random_range(0.5..1.0))
}

/// Where and how requests of one route go upstream: path rewrites, the authority.
struct UpstreamTarget {
    authority: String,
    path_and_query: String,
    http2: bool,
}

impl UpstreamTarget {
    fn new(parts: &http::request::Parts, route: &Route, upstream: &Upstream) -> Self {
        let action = &route.action;
        let path = action
            .rewrite_path(route, parts.uri.path())
            .unwrap_or_else(|| parts.uri.path().to_owned());
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let authority = action
            .host_rewrite
            .clone()
            .unwrap_or_else(|| authority(parts).to_owned());
        Self {
            authority,
            path_and_query,
            http2: upstream.plan.http2,
        }
    }

    fn request(
        &self,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Request<Body>, LocalReply> {
        let uri = format!("http://{}{}", self.authority, self.path_and_query);
        let mut request = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(body)
            .map_err(|e| {
                LocalReply::new(
                    StatusCode::BAD_REQUEST,
                    format!("request cannot be forwarded: {e}"),
                    ResponseFlags::default(),
                )
            })?;
        let headers = request.headers_mut();
        *headers = parts.headers.clone();
        strip_hop_by_hop(headers);
        if self.http2 {
            // :authority carries it.
            headers.remove(header::HOST);
        } else if let Ok(host) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, host);
        }
        Ok(request)
    }
}

/// How one try ended.
enum TryResult {
    Response(Response<Incoming>, InFlight),
    /// No endpoint could take it (none, none healthy, pool full).
    NotSent(PickError),
    ConnectFailed(String),
    /// The connection failed after the request was sent (reset, protocol error).
    Reset(String),
    TimedOut(Duration),
}

async fn try_once(
    upstream: &Upstream,
    request: Request<Body>,
    timeout: Option<Duration>,
    host: &mut Option<SocketAddr>,
) -> TryResult {
    let in_flight = match upstream.pick().await {
        Ok(in_flight) => in_flight,
        Err(error) => return TryResult::NotSent(error),
    };
    *host = Some(in_flight.endpoint.addr);
    let sent = in_flight.endpoint.client.request(request);
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(result) => result,
            Err(_) => {
                upstream.record(&in_flight.endpoint, Outcome::Error);
                return TryResult::TimedOut(limit);
            }
        },
        None => sent.await,
    };
    match result {
        Ok(response) => {
            let outcome = if response.status().is_server_error() {
                Outcome::Error
            } else {
                Outcome::Success
            };
            upstream.record(&in_flight.endpoint, outcome);
            TryResult::Response(response, in_flight)
        }
        Err(error) => {
            upstream.record(&in_flight.endpoint, Outcome::Error);
            let detail = format!("{} ({error:?})", in_flight.endpoint.addr);
            if error.is_connect() {
                TryResult::ConnectFailed(detail)
            } else {
                TryResult::Reset(detail)
            }
        }
    }
}

impl TryResult {
    fn retriable(&self, policy: &RetryPolicy) -> bool {
        match self {
            Self::Response(response, _) => {
                policy.retries_status(response.status().as_u16(), grpc_status(response.headers()))
            }
            Self::NotSent(_) => false,
            Self::ConnectFailed(_) => policy.retries_failure(true),
            Self::Reset(_) => policy.retries_failure(false),
            Self::TimedOut(_) => policy.retries_timeout(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Response(response, _) => format!("status {}", response.status()),
            Self::NotSent(error) => error.to_string(),
            Self::ConnectFailed(detail) => format!("connect failed: {detail}"),
            Self::Reset(detail) => format!("reset: {detail}"),
            Self::TimedOut(limit) => format!("no response within {limit:?}"),
        }
    }

    /// The response to the client: the upstream's (its body holding the endpoint's slot
    /// until it ends), or the status the failure maps to, as Envoy maps them.
    fn into_response(
        self,
        upstream: &Upstream,
        request_timed_out: bool,
    ) -> Result<Response<Body>, LocalReply> {
        let cluster = upstream.name();
        let unavailable =
            |reason: String, flag| LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, reason, flag);
        match self {
            Self::Response(response, in_flight) => {
                let mut response = response.map(|body| {
                    body.map_err(BoxError::from)
                        .map_frame(move |frame| {
                            let _held = &in_flight;
                            frame
                        })
                        .boxed_unsync()
                });
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
            Self::NotSent(error @ PickError::Overflow(_)) => Err(unavailable(
                error.to_string(),
                ResponseFlags::UPSTREAM_OVERFLOW,
            )),
            Self::NotSent(error) => Err(unavailable(
                error.to_string(),
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            )),
            Self::ConnectFailed(detail) => Err(unavailable(
                format!("cluster {cluster}: upstream connect error: {detail}"),
                ResponseFlags::UPSTREAM_CONNECT_FAILURE,
            )),
            Self::Reset(detail) => Err(unavailable(
                format!("cluster {cluster}: upstream reset before response: {detail}"),
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            )),
            Self::TimedOut(_) if request_timed_out => Err(LocalReply::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                ResponseFlags::UPSTREAM_TIMEOUT,
            )),
            Self::TimedOut(limit) => Err(LocalReply::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("cluster {cluster}: upstream per-try timeout ({limit:?})"),
                ResponseFlags::UPSTREAM_TIMEOUT,
            )),
        }
    }
}

impl RouteLabels {
    /// A request no route took.
    fn unrouted(source: &str, service: &str) -> Self {
        Self {
            reporter: "outbound",
            source_virtual_node: source.to_owned(),
            destination_virtual_service: service.to_owned(),
            destination_virtual_node: "unknown".into(),
            route: "unknown".into(),
        }
    }
}

/// A request body as retries need it.
enum RequestBody {
    /// Read whole; sent again on each try.
    Buffered(Bytes, Option<HeaderMap>),
    /// Sent once (too long to keep, or no retry policy).
    Streaming(Option<CountedBody>),
    /// Longer than the buffer: what was read, then the rest; sent once.
    Prefixed(Option<(VecDeque<Bytes>, CountedBody)>),
}

impl RequestBody {
    async fn buffer(mut body: CountedBody) -> Result<Self, hyper::Error> {
        let mut chunks = VecDeque::new();
        let mut size = 0;
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push_back(data);
                    if size > RETRY_BUFFER_LIMIT {
                        return Ok(Self::Prefixed(Some((chunks, body))));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Ok(Self::Buffered(concat(chunks, size), trailers));
                }
            }
        }
        Ok(Self::Buffered(concat(chunks, size), None))
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(..))
    }

    /// The body for the next try (for streaming bodies: the first and only one).
    fn take(&mut self) -> Body {
        match self {
            Self::Buffered(data, None) => full(data.clone()),
            Self::Buffered(data, Some(trailers)) => Replay {
                data: Some(data.clone()),
                trailers: Some(trailers.clone()),
            }
            .boxed_unsync(),
            Self::Streaming(body) => match body.take() {
                Some(body) => body.map_err(BoxError::from).boxed_unsync(),
                None => full(Bytes::new()),
            },
            Self::Prefixed(parts) => match parts.take() {
                Some((prefix, rest)) => Prefixed { prefix, rest }.boxed_unsync(),
                None => full(Bytes::new()),
            },
        }
    }
}

fn concat(chunks: VecDeque<Bytes>, size: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(size);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.into()
}

/// A response body held to what is left of the route timeout and to the route's idle
/// timeout: a body that stalls past either ends in an error, so the client sees the stream
/// (HTTP/2) or connection (HTTP/1.1) reset instead of waiting, as Envoy does.
struct TimedBody {
    inner: Body,
    deadline: Option<tokio::time::Instant>,
    idle: Option<Duration>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn wrap(inner: Body, deadline: Option<Instant>, idle: Option<Duration>) -> Body {
        if deadline.is_none() && idle.is_none() {
            return inner;
        }
        let mut body = Self {
            inner,
            deadline: deadline.map(tokio::time::Instant::from_std),
            idle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        body.rearm();
        body.boxed_unsync()
    }

    fn rearm(&mut self) {
        let idle = self.idle.map(|idle| tokio::time::Instant::now() + idle);
        let next = match (self.deadline, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(next) = next {
            self.timer.as_mut().reset(next);
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.rearm();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(done) => return Poll::Ready(done),
            Poll::Pending => {}
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(
                "upstream response timed out (route timeout or idle timeout)".into(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A kept body with trailers (gRPC requests may carry them), sent again.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// What was read while deciding whether to keep the body, then the rest of it.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: CountedBody,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: usize = self.prefix.iter().map(Bytes::len).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix as u64);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix as u64);
        }
        hint
    }
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Host (HTTP/1.1) or :authority (HTTP/2).
fn authority(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

/// Gives a request that has none an `x-request-id` (a random UUID, as Envoy does), so every
/// hop and log line of it can be correlated. Trace headers (`traceparent`, `tracestate`,
/// `x-amzn-trace-id`, B3) pass through unchanged.
fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    let bits: u128 = rand::random();
    // Version 4, variant 1.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
}

const REQUEST_ID: &str = "x-request-id";

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_a_uuid_request_id_unless_they_have_one() {
        let mut headers = HeaderMap::new();
        ensure_request_id(&mut headers);
        let id = headers[REQUEST_ID].to_str().unwrap().to_owned();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!("89ab".contains(&id[19..20]), "variant: {id}");
        ensure_request_id(&mut headers);
        assert_eq!(headers[REQUEST_ID], id.as_str(), "an existing id is kept");
    }
}
