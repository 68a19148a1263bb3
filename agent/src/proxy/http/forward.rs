//! Forwarding a routed request: the tries of the route's retry policy with Envoy's back-off,
//! per-try and route timeouts, and what each way a try can end means for the client.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::{body::Incoming, upgrade::OnUpgrade};
use mesh_xds::plan::route::{RetryPolicy, Route};
use tracing::debug;

use super::{
    HttpContext,
    body::{RequestBody, TimedBody},
    exchange::{CountedBody, Exchange},
    headers::{Message, authority, grpc_status, strip_hop_by_hop},
    local_reply::LocalReply,
    upgrade,
};
use crate::{
    dataplane::upstream::{Body, BoxError, InFlight, Outcome, PickError, Upstream},
    telemetry::access_log::ResponseFlags,
    tls::HandshakeFailed,
};

/// Envoy's retry back-off: 25 ms base, doubling, jittered, at most 250 ms.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(25);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Sends the request to `upstream`, retrying and timing out as the route says.
pub async fn forward(
    context: &HttpContext,
    exchange: &mut Exchange,
    mut parts: http::request::Parts,
    body: CountedBody,
    route: &Route,
    upstream: &Arc<Upstream>,
) -> Result<Response<Body>, LocalReply> {
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
    // An upgrade the listener allows: the client's side of it, switched once the endpoint's is.
    let mut client_upgrade = match &target.upgrade {
        Some(_) if upstream.plan.http2 => {
            return Err(LocalReply::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "cluster {} speaks HTTP/2: an HTTP/1.1 upgrade cannot pass to it",
                    upstream.name()
                ),
                ResponseFlags::default(),
            ));
        }
        Some(_) => parts.extensions.remove::<OnUpgrade>(),
        None => None,
    };
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
            let result = match (result, client_upgrade.take(), &target.upgrade) {
                (TryResult::Response(response, held), Some(client), Some(protocol))
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                {
                    let cut = context.cut.clone();
                    return Ok(upgrade::switch(response, held, client, protocol, cut));
                }
                (result, _, _) => result,
            };
            return result
                .into_response(upstream, deadline.is_some_and(|d| Instant::now() >= d))
                .map(timed);
        }
        let Some(slot) = upstream.begin_retry() else {
            return result.into_response(upstream, false).map(timed);
        };
        _retry_slot = Some(slot);
        retries += 1;
        context.metrics.retried(&exchange.labels);
        debug!(route = %route.name, cluster = %upstream.name(), retries, outcome = %result.describe(), "retrying");
        tokio::time::sleep(backoff(retries)).await;
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
    /// The protocol the client asks to upgrade to (the listener allowed it).
    upgrade: Option<HeaderValue>,
}

/// The path (with the query) and authority a request that took `route` goes on with: the
/// route's path and host rewrites applied.
fn rewritten(parts: &http::request::Parts, route: &Route) -> (String, String) {
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
    (path_and_query, authority)
}

/// The request as an internal listener takes it after `route` (a gateway route's rewrites:
/// path and Host); its new authority.
pub fn rewrite_for_internal(
    parts: &mut http::request::Parts,
    route: &Route,
) -> Result<String, LocalReply> {
    let (path_and_query, authority) = rewritten(parts, route);
    let invalid = |what: &str| {
        LocalReply::new(
            StatusCode::BAD_REQUEST,
            format!(
                "route {} rewrites the request to an invalid {what}",
                route.name
            ),
            ResponseFlags::default(),
        )
    };
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(path_and_query.parse().map_err(|_| invalid("path"))?);
    parts.uri = http::Uri::from_parts(uri).map_err(|_| invalid("path"))?;
    let host = HeaderValue::from_str(&authority).map_err(|_| invalid("host"))?;
    parts.headers.insert(header::HOST, host);
    Ok(authority.to_ascii_lowercase())
}

impl UpstreamTarget {
    fn new(parts: &http::request::Parts, route: &Route, upstream: &Upstream) -> Self {
        let (path_and_query, authority) = rewritten(parts, route);
        Self {
            authority,
            path_and_query,
            http2: upstream.plan.http2,
            upgrade: upgrade::requested(parts).cloned(),
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
        strip_hop_by_hop(headers, Message::Request);
        if let Some(protocol) = &self.upgrade {
            upgrade::keep(headers, protocol);
        }
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
            let peer = in_flight.endpoint.addr;
            if let Some(failed) = HandshakeFailed::find(&error) {
                return TryResult::ConnectFailed(failed.to_string());
            }
            if let Some(failed) = HandshakeFailed::late(peer, &error) {
                return TryResult::ConnectFailed(upstream.tls_refused(failed).to_string());
            }
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
                strip_hop_by_hop(response.headers_mut(), Message::Response);
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
