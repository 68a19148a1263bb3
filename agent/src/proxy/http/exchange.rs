//! One request through the proxy, observed from its arrival to the last byte of its response
//! (or the client giving up): the request and response sizes, the gRPC status (headers or
//! trailers), what went wrong (Envoy's response flags) and which endpoint answered. When it
//! completes, it is counted in the per-service metrics, written to the access logs and, when
//! its trace is sampled, recorded as a span — exactly once, whether the response body ended
//! or was dropped.
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::{
    HttpContext,
    headers::{REQUEST_ID, grpc_status},
    last_response::CorkAtEnd,
};
use crate::{
    dataplane::upstream::{Body, BoxError},
    telemetry::{
        access_log::{Entry, RequestHead, ResponseFlags},
        metrics::{RequestOutcome, RouteLabels},
        trace::{MeshNames, Outcome, RequestFacts, RequestSpan, SpanPlace},
    },
};

/// The request in flight; finished by [`Exchange::respond`]'s body.
pub struct Exchange {
    started: Instant,
    context: Arc<HttpContext>,
    pub labels: RouteLabels,
    pub flags: ResponseFlags,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub attempts: u32,
    grpc: bool,
    request_bytes: Arc<AtomicU64>,
    response_code: u16,
    response_seconds: f64,
    response_bytes: u64,
    grpc_status: Option<u32>,
    /// Kept only when an access log is written.
    entry: Option<Box<Entry>>,
    /// Kept only when the request's trace is sampled.
    span: Option<Box<TracedRequest>>,
    completed: bool,
    /// The connection's last response: the client's socket, corked as its last frame goes.
    cork_at_end: Option<CorkAtEnd>,
}

/// A sampled request's span, as far as its start tells it.
struct TracedRequest {
    place: SpanPlace,
    start: SystemTime,
    first_byte: Option<Duration>,
    request: RequestFacts,
}

impl Exchange {
    pub fn start(
        context: Arc<HttpContext>,
        labels: RouteLabels,
        parts: &http::request::Parts,
        authority: &str,
        grpc: bool,
        span: Option<SpanPlace>,
    ) -> Self {
        let entry = context.loggers.as_ref().map(|_| {
            let mut entry = Entry::new(context.peer, context.local, context.virtual_node());
            entry.protocol = Some(protocol(parts.version));
            entry.source_virtual_node =
                Some(context.source.clone()).filter(|source| source != "unknown");
            entry.request = Some(RequestHead {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                authority: authority.to_owned(),
                headers: parts.headers.clone(),
            });
            Box::new(entry)
        });
        let span = span.map(|place| {
            Box::new(TracedRequest {
                place,
                start: SystemTime::now(),
                first_byte: None,
                request: RequestFacts {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_owned(),
                    authority: authority.to_owned(),
                    protocol: protocol(parts.version).trim_start_matches("HTTP/"),
                    request_id: parts
                        .headers
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    client: context.peer,
                },
            })
        });
        Self {
            started: Instant::now(),
            context,
            labels,
            flags: ResponseFlags::default(),
            upstream_host: None,
            upstream_cluster: None,
            attempts: 0,
            grpc,
            request_bytes: Arc::new(AtomicU64::new(0)),
            response_code: 0,
            response_seconds: 0.0,
            response_bytes: 0,
            grpc_status: None,
            entry,
            span,
            completed: false,
            cork_at_end: parts.extensions.get::<CorkAtEnd>().copied(),
        }
    }

    /// Whether the request's trace is sampled (its span will be recorded).
    pub fn traced(&self) -> bool {
        self.span.is_some()
    }

    /// The request body, counted as it is read.
    pub fn count_request(&self, body: Incoming) -> CountedBody {
        CountedBody {
            inner: body,
            count: Arc::clone(&self.request_bytes),
        }
    }

    /// The response goes out: its status and headers are noted now, its body is watched to
    /// the end, where the exchange completes.
    pub fn respond(mut self, response: Response<Body>) -> Response<Body> {
        let to_headers = self.started.elapsed();
        self.response_code = response.status().as_u16();
        self.response_seconds = to_headers.as_secs_f64();
        if self.grpc {
            self.grpc_status = grpc_status(response.headers());
        }
        if let Some(entry) = &mut self.entry {
            entry.response_headers = Some(response.headers().clone());
            entry.response_duration = Some(to_headers);
        }
        if let Some(span) = &mut self.span {
            span.first_byte = Some(to_headers);
        }
        if response.body().is_end_stream() {
            // No frame will be polled: what hyper writes is the head alone.
            self.cork_for_the_end();
        }
        response.map(|body| {
            ObservedBody {
                inner: body,
                exchange: Some(Box::new(self)),
            }
            .boxed_unsync()
        })
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if self.grpc {
            self.grpc_status = grpc_status(trailers).or(self.grpc_status);
        }
        if let Some(entry) = &mut self.entry {
            entry.trailers = Some(trailers.clone());
        }
    }

    /// Corks the client's socket if this is the connection's last response
    /// (last_response.rs): the frame going out now leaves with the FIN.
    fn cork_for_the_end(&mut self) {
        if let Some(socket) = self.cork_at_end.take() {
            socket.cork();
        }
    }

    /// Counts and logs the request, once. `ended`: the client got the whole response.
    fn complete(&mut self, ended: bool) {
        if self.completed {
            return;
        }
        self.completed = true;
        if !ended {
            self.flags.insert(ResponseFlags::DOWNSTREAM_TERMINATION);
        }
        if self.response_code == 0 {
            // No response at all: the client left while the request was on its way.
            self.response_seconds = self.started.elapsed().as_secs_f64();
        }
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        // A gRPC response that never said how it ended: Unknown, as gRPC clients read it.
        let grpc_status = self.grpc.then(|| self.grpc_status.unwrap_or(GRPC_UNKNOWN));
        self.context.record(
            &self.labels,
            RequestOutcome {
                response_code: self.response_code,
                grpc_status,
                seconds: self.response_seconds,
                request_bytes,
                response_bytes: self.response_bytes,
            },
        );
        self.record_span(request_bytes, grpc_status);
        if let (Some(loggers), Some(mut entry)) = (&self.context.loggers, self.entry.take()) {
            entry.response_code = Some(self.response_code);
            entry.flags = self.flags;
            entry.bytes_received = request_bytes;
            entry.bytes_sent = self.response_bytes;
            entry.duration = self.started.elapsed();
            entry.upstream_host = self.upstream_host;
            entry.upstream_cluster = self.upstream_cluster.take();
            entry.attempts = self.attempts;
            entry.route = Some(self.labels.route.clone()).filter(|r| r != "unknown");
            entry.grpc_status = grpc_status;
            loggers.log(&entry);
        }
    }
}

impl Exchange {
    /// Hands a sampled request's span to the tracer.
    fn record_span(&mut self, request_bytes: u64, grpc_status: Option<u32>) {
        let (Some(tracer), Some(span)) = (&self.context.tracer, self.span.take()) else {
            return;
        };
        let known = |name: &String| Some(name.clone()).filter(|n| n != "unknown");
        let side = &self.context.side;
        tracer.record(RequestSpan {
            trace_id: span.place.trace_id,
            span_id: span.place.span_id,
            parent: span.place.parent,
            kind: side.span_kind,
            start: span.start,
            first_byte: span.first_byte,
            duration: self.started.elapsed(),
            request: span.request,
            names: MeshNames {
                reporter: side.reporter,
                virtual_node: side.virtual_node.clone(),
                source_virtual_node: known(&self.labels.source_virtual_node),
                virtual_service: known(&self.labels.destination_virtual_service),
                destination_virtual_node: known(&self.labels.destination_virtual_node),
                route: known(&self.labels.route),
                cluster: self.upstream_cluster.clone(),
                upstream_host: self.upstream_host,
            },
            outcome: Outcome {
                response_code: self.response_code,
                grpc_status,
                retries: self.attempts.saturating_sub(1),
                request_bytes,
                response_bytes: self.response_bytes,
                flags: match self.flags == ResponseFlags::default() {
                    true => String::new(),
                    false => self.flags.to_text(),
                },
            },
        });
    }
}

/// A request whose handling was dropped before it had a response (the client went away; its
/// stream or connection closed) is still counted and logged: code 0, flag DC, as Envoy does.
impl Drop for Exchange {
    fn drop(&mut self) {
        self.complete(false);
    }
}

const GRPC_UNKNOWN: u32 = 2;

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The client's request body, its bytes counted.
pub struct CountedBody {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way to the client; completes the exchange at its end.
struct ObservedBody {
    inner: Body,
    exchange: Option<Box<Exchange>>,
}

impl ObservedBody {
    /// The body's last frame is going out: cork a last response's socket for it (only here,
    /// while hyper polls the body and so holds the socket open; not on drop, when the
    /// socket may be closed and its number reused) and complete the exchange.
    fn end(&mut self) {
        if let Some(exchange) = &mut self.exchange {
            exchange.cork_for_the_end();
        }
        self.finish(true);
    }

    fn finish(&mut self, ended: bool) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.complete(ended);
        }
    }
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(exchange) = &mut self.exchange {
                    if let Some(data) = frame.data_ref() {
                        exchange.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        exchange.trailers(trailers);
                    }
                }
                if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(None) => self.end(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(exchange) = &mut self.exchange {
                    exchange
                        .flags
                        .insert(ResponseFlags::UPSTREAM_CONNECTION_TERMINATION);
                }
                // The upstream failed, not the client.
                self.finish(true);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Bodies hyper never polls (HEAD, 204) end here too.
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}
