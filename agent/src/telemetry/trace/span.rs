//! One request's span as the proxy records it: where it sits in its trace, the App Mesh
//! names the request took, and its timings. Plain data: turning it into OTLP is the
//! exporter's work, off the request path.
use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use super::ids::{SpanId, TraceId};

/// The span's side of the call (OTLP's SpanKind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The caller's side: outbound, from a workload to its backend.
    Client,
    /// The receiving side: inbound to a pod, or a gateway taking a request into the mesh.
    Server,
}

#[derive(Clone, Debug)]
pub struct RequestSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub kind: SpanKind,
    /// When the request arrived (wall clock, for the collector).
    pub start: SystemTime,
    /// From arrival to the response headers going to the client.
    pub first_byte: Option<Duration>,
    /// From arrival to the end of the response (or the client leaving).
    pub duration: Duration,
    pub request: RequestFacts,
    pub names: MeshNames,
    pub outcome: Outcome,
}

/// What the request said.
#[derive(Clone, Debug)]
pub struct RequestFacts {
    pub method: http::Method,
    pub path: String,
    pub authority: String,
    /// `1.1`, `2`.
    pub protocol: &'static str,
    pub request_id: Option<String>,
    /// The connection's client.
    pub client: SocketAddr,
}

/// The App Mesh resources the request met; `None` where it met none.
#[derive(Clone, Debug, Default)]
pub struct MeshNames {
    /// `outbound`, `inbound` or `gateway`.
    pub reporter: &'static str,
    /// The virtual node (or gateway) whose listener took the request: the span's service.
    pub virtual_node: String,
    pub source_virtual_node: Option<String>,
    pub virtual_service: Option<String>,
    pub destination_virtual_node: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub upstream_host: Option<SocketAddr>,
}

impl MeshNames {
    /// The mesh: the first part of `mesh/name` (or `mesh/gateway/name`).
    pub fn mesh(&self) -> &str {
        self.virtual_node
            .split_once('/')
            .map_or(self.virtual_node.as_str(), |(mesh, _)| mesh)
    }
}

/// How the request ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// 0: no response (the client left first).
    pub response_code: u16,
    pub grpc_status: Option<u32>,
    pub retries: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Envoy's response flags (`UF`, `URX`, ...), empty when nothing went wrong.
    pub flags: String,
}

impl RequestSpan {
    /// The span's name: the method and the route it took (OpenTelemetry's HTTP convention,
    /// the route standing for `http.route`), or the method alone when no route took it.
    pub fn name(&self) -> String {
        match &self.names.route {
            Some(route) => format!("{} {route}", self.request.method),
            None => self.request.method.to_string(),
        }
    }

    /// Whether the span reports an error, by OpenTelemetry's HTTP and gRPC conventions: no
    /// response or 5xx on either side, 4xx on the client side; gRPC: any non-OK status on
    /// the client side, the server's own failures on the server side.
    pub fn failed(&self) -> bool {
        let code = self.outcome.response_code;
        let http = match self.kind {
            SpanKind::Client => code == 0 || code >= 400,
            SpanKind::Server => code == 0 || code >= 500,
        };
        let grpc = self
            .outcome
            .grpc_status
            .is_some_and(|status| match self.kind {
                SpanKind::Client => status != 0,
                // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
                SpanKind::Server => matches!(status, 2 | 4 | 12 | 13 | 14 | 15),
            });
        http || grpc
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sample(kind: SpanKind) -> RequestSpan {
        RequestSpan {
            trace_id: TraceId::generate(),
            span_id: SpanId::generate(),
            parent: None,
            kind,
            start: SystemTime::now(),
            first_byte: Some(Duration::from_millis(3)),
            duration: Duration::from_millis(5),
            request: RequestFacts {
                method: http::Method::GET,
                path: "/items".into(),
                authority: "api.m.local:8080".into(),
                protocol: "1.1",
                request_id: Some("id-1".into()),
                client: SocketAddr::from(([10, 0, 0, 2], 40000)),
            },
            names: MeshNames {
                reporter: "outbound",
                virtual_node: "m/client".into(),
                route: Some("canary".into()),
                ..Default::default()
            },
            outcome: Outcome {
                response_code: 200,
                ..Default::default()
            },
        }
    }

    #[test]
    fn names_and_errors_follow_the_conventions() {
        let mut span = sample(SpanKind::Client);
        assert_eq!(span.name(), "GET canary");
        assert_eq!(span.names.mesh(), "m");
        assert!(!span.failed());
        span.outcome.response_code = 404;
        assert!(span.failed());
        span.kind = SpanKind::Server;
        assert!(!span.failed(), "a 404 is the client's error");
        span.outcome.response_code = 200;
        span.outcome.grpc_status = Some(5);
        assert!(!span.failed(), "NOT_FOUND is not the server's failure");
        span.outcome.grpc_status = Some(14);
        assert!(span.failed());
        span.names.route = None;
        assert_eq!(span.name(), "GET");
    }
}
