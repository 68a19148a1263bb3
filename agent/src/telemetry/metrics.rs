//! Prometheus metrics the proxy records into: per-destination connection and byte counters,
//! per-service request series, per-cluster counters; and the registry /metrics encodes, into
//! which the other subsystems register collectors of their own (read at scrape time).
use prometheus_client::{
    collector::Collector,
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::{access_log::AccessLogWriters, process::ProcessCollector, trace::TraceMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// The original destination, `ip:port`.
    pub destination: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum Direction {
    /// From the client to the destination.
    sent,
    /// From the destination back to the client.
    received,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub destination: String,
    pub direction: Direction,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum FailureReason {
    /// The destination refused the connection (RST).
    refused,
    /// No answer within proxy.connect_timeout.
    timeout,
    /// No route to the destination.
    unreachable,
    /// Accepted a connection that has no original destination record (not redirected).
    no_original_destination,
    /// The TLS handshake toward the destination failed (mesh_agent_tls_handshakes_total says
    /// why).
    tls,
    /// Anything else; the log line says what.
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub destination: String,
    pub reason: FailureReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `outbound`, `inbound`, `admin`, `admin-socket`.
    pub listener: String,
}

/// Metrics the proxy updates as connections come and go.
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    opened: Family<DestinationLabels, Counter>,
    closed: Family<DestinationLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    active: Gauge,
    accept_errors: Family<ListenerLabels, Counter>,
    inbound_ports: Gauge,
}

/// The counters of one proxied connection, resolved once so the copy loop only touches atomics.
pub struct ConnectionMetrics {
    pub sent: Counter,
    pub received: Counter,
    closed: Counter,
    active: Gauge,
}

impl ProxyMetrics {
    pub fn opened(&self, destination: &str) -> ConnectionMetrics {
        let labels = DestinationLabels {
            destination: destination.to_owned(),
        };
        self.opened.get_or_create(&labels).inc();
        self.active.inc();
        let bytes = |direction| {
            self.bytes
                .get_or_create(&BytesLabels {
                    destination: destination.to_owned(),
                    direction,
                })
                .clone()
        };
        ConnectionMetrics {
            sent: bytes(Direction::sent),
            received: bytes(Direction::received),
            closed: self.closed.get_or_create(&labels).clone(),
            active: self.active.clone(),
        }
    }

    pub fn failed(&self, destination: &str, reason: FailureReason) {
        self.failed
            .get_or_create(&FailureLabels {
                destination: destination.to_owned(),
                reason,
            })
            .inc();
    }

    /// The counter of accept failures of `listener`, given to its accept loop.
    pub fn accept_errors(&self, listener: &str) -> Counter {
        self.accept_errors
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// How many (pod address, listener port) pairs the inbound capture holds now.
    pub fn inbound_ports_captured(&self, count: usize) {
        self.inbound_ports
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_agent_inbound_ports_captured",
            "Listener ports of enrolled pods (one per pod address and port) whose connections the node proxy captures; a port not yet captured reaches the application directly",
            self.inbound_ports.clone(),
        );
        registry.register(
            "mesh_agent_accept_errors",
            "accept() failures by listener (e.g. out of file descriptors); each is waited out with a back-off",
            self.accept_errors.clone(),
        );
        registry.register(
            "mesh_agent_proxy_connections_opened",
            "Connections the proxy opened to their original destination",
            self.opened.clone(),
        );
        registry.register(
            "mesh_agent_proxy_connections_closed",
            "Proxied connections that ended",
            self.closed.clone(),
        );
        registry.register(
            "mesh_agent_proxy_connections_failed",
            "Redirected connections the proxy could not open, by reason",
            self.failed.clone(),
        );
        registry.register(
            "mesh_agent_proxy_bytes",
            "Bytes relayed, by direction (sent: client to destination)",
            self.bytes.clone(),
        );
        registry.register(
            "mesh_agent_proxy_active_connections",
            "Connections currently relayed by the proxy",
            self.active.clone(),
        );
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.closed.inc();
        self.active.dec();
    }
}

/// Who asked and what answered: the labels of one request, bounded by the mesh's resources.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_virtual_node: String,
    pub destination_virtual_service: String,
    pub destination_virtual_node: String,
    pub route: String,
    pub response_code: u16,
    /// The gRPC status code (0-16); empty for requests that are not gRPC.
    pub grpc_status: Option<u32>,
}

/// How a request ended, as the metrics record it.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome {
    pub response_code: u16,
    pub grpc_status: Option<u32>,
    /// From the request's arrival to the response headers.
    pub seconds: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// gRPC's highest status code; anything above is recorded as Unknown (2), keeping the label
/// bounded whatever an upstream sends.
const GRPC_MAX_STATUS: u32 = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub reporter: &'static str,
    pub source_virtual_node: String,
    pub destination_virtual_service: String,
    pub destination_virtual_node: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub source_virtual_node: String,
    pub port: u16,
}

/// Request latency buckets from 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
    30.0,
];

/// Per-service metrics of the mesh the proxy applies.
#[derive(Clone)]
pub struct MeshMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    request_bytes: Family<RouteLabels, Counter>,
    response_bytes: Family<RouteLabels, Counter>,
    retries: Family<RouteLabels, Counter>,
    overflows: Family<ClusterLabels, Counter>,
    retry_overflows: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    health_changes: Family<ClusterLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    parked: Gauge,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(LATENCY_BUCKETS.iter().copied())
            }),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            retries: Family::default(),
            overflows: Family::default(),
            retry_overflows: Family::default(),
            ejections: Family::default(),
            health_changes: Family::default(),
            denied: Family::default(),
            parked: Gauge::default(),
        }
    }
}

/// The series of one route (source, destination, route), resolved once and reused while a
/// connection's requests keep taking that route: recording a request then touches atomics
/// and a lock per histogram, without hashing or cloning label strings.
pub struct RouteRecorder {
    labels: RouteLabels,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    /// By response code and gRPC status: the few a route sees.
    requests: Vec<((u16, Option<u32>), Counter)>,
}

impl RouteRecorder {
    pub fn labels(&self) -> &RouteLabels {
        &self.labels
    }

    pub fn record(&mut self, metrics: &MeshMetrics, outcome: RequestOutcome) {
        self.duration.observe(outcome.seconds);
        self.request_bytes.inc_by(outcome.request_bytes);
        self.response_bytes.inc_by(outcome.response_bytes);
        let grpc_status = outcome
            .grpc_status
            .map(|code| if code > GRPC_MAX_STATUS { 2 } else { code });
        let key = (outcome.response_code, grpc_status);
        let index = match self.requests.iter().position(|(k, _)| *k == key) {
            Some(index) => index,
            None => {
                let labels = &self.labels;
                let counter = metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        reporter: labels.reporter,
                        source_virtual_node: labels.source_virtual_node.clone(),
                        destination_virtual_service: labels.destination_virtual_service.clone(),
                        destination_virtual_node: labels.destination_virtual_node.clone(),
                        route: labels.route.clone(),
                        response_code: outcome.response_code,
                        grpc_status,
                    })
                    .clone();
                self.requests.push((key, counter));
                self.requests.len() - 1
            }
        };
        self.requests[index].1.inc();
    }
}

/// The counters of one cluster, resolved once.
#[derive(Clone, Default)]
pub struct ClusterMetrics {
    pub overflows: Counter,
    pub retry_overflows: Counter,
    pub ejections: Counter,
    pub health_changes: Counter,
}

impl MeshMetrics {
    /// The series of `labels`, looked up once for a connection's requests to share.
    pub fn recorder(&self, labels: &RouteLabels) -> RouteRecorder {
        RouteRecorder {
            labels: labels.clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
            requests: Vec::new(),
        }
    }

    pub fn retried(&self, labels: &RouteLabels) {
        self.retries.get_or_create(labels).inc();
    }

    pub fn denied(&self, source_virtual_node: &str, port: u16) {
        self.denied
            .get_or_create(&DeniedLabels {
                source_virtual_node: source_virtual_node.to_owned(),
                port,
            })
            .inc();
    }

    /// HTTP/1.1 connections parked (idle, holding no buffer) right now.
    pub fn parked_connections(&self) -> &Gauge {
        &self.parked
    }

    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let labels = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        ClusterMetrics {
            overflows: self.overflows.get_or_create(&labels).clone(),
            retry_overflows: self.retry_overflows.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            health_changes: self.health_changes.get_or_create(&labels).clone(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_requests",
            "HTTP/gRPC requests by source virtual node, destination virtual service and node, route, response code and gRPC status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "mesh_request_duration",
            "Time from the request's arrival to the end of the response headers",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "mesh_request",
            "Request body bytes received from clients",
            Unit::Bytes,
            self.request_bytes.clone(),
        );
        registry.register_with_unit(
            "mesh_response",
            "Response body bytes sent to clients",
            Unit::Bytes,
            self.response_bytes.clone(),
        );
        registry.register(
            "mesh_request_retries",
            "Retries the proxy made under a route's retry policy",
            self.retries.clone(),
        );
        registry.register(
            "mesh_upstream_overflows",
            "Requests answered 503 because a cluster's connection pool (circuit breaker) was full",
            self.overflows.clone(),
        );
        registry.register(
            "mesh_upstream_retry_overflows",
            "Retries not made because a cluster's max_retries were in flight",
            self.retry_overflows.clone(),
        );
        registry.register(
            "mesh_outlier_ejections",
            "Endpoints ejected by outlier detection",
            self.ejections.clone(),
        );
        registry.register(
            "mesh_health_check_changes",
            "Endpoints that changed health (active health checks)",
            self.health_changes.clone(),
        );
        registry.register(
            "mesh_denied_connections",
            "Connections refused because the source's virtual node may not reach the port (DROP_ALL egress)",
            self.denied.clone(),
        );
        registry.register(
            "mesh_http_connections_parked",
            "HTTP/1.1 client connections idle between requests, parked without buffers",
            self.parked.clone(),
        );
    }
}

/// Everything /metrics shows.
pub struct Metrics {
    registry: Registry,
    pub proxy: ProxyMetrics,
    pub mesh: MeshMetrics,
    pub access_logs: AccessLogWriters,
    pub traces: TraceMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics::default();
        proxy.register(&mut registry);
        let mesh = MeshMetrics::default();
        mesh.register(&mut registry);
        let access_logs = AccessLogWriters::default();
        access_logs.register(&mut registry);
        let traces = TraceMetrics::default();
        traces.register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            proxy,
            mesh,
            access_logs,
            traces,
        }
    }
}

impl Metrics {
    /// Adds series another subsystem reads at scrape time (the redirect's kernel counters,
    /// the data plane's endpoints, the xDS session).
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Adds a metric another subsystem records into (e.g. TLS handshakes).
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition: counters are
/// declared under their `_total` sample name, and `# UNIT` / `# EOF` go.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let declared = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(declared.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let metrics = Metrics::default();
        metrics.proxy.failed("10.0.0.3:81", FailureReason::refused);
        let classic = classic_text(&metrics.encode().unwrap());
        assert!(classic.contains("# TYPE mesh_agent_proxy_connections_failed_total counter\n"));
        assert!(classic.contains("# HELP mesh_agent_proxy_connections_failed_total "));
        assert!(classic.contains("# TYPE mesh_agent_process_open_fds gauge\n"));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }

    #[test]
    fn connection_lifecycle_is_counted() {
        let metrics = Metrics::default();
        {
            let conn = metrics.proxy.opened("10.0.0.2:80");
            conn.sent.inc_by(100);
            conn.received.inc_by(7);
            let text = metrics.encode().unwrap();
            assert!(
                text.contains("mesh_agent_proxy_active_connections 1"),
                "{text}"
            );
        }
        metrics.proxy.failed("10.0.0.3:81", FailureReason::refused);
        let text = metrics.encode().unwrap();
        for line in [
            "mesh_agent_proxy_connections_opened_total{destination=\"10.0.0.2:80\"} 1",
            "mesh_agent_proxy_connections_closed_total{destination=\"10.0.0.2:80\"} 1",
            "mesh_agent_proxy_bytes_total{destination=\"10.0.0.2:80\",direction=\"sent\"} 100",
            "mesh_agent_proxy_bytes_total{destination=\"10.0.0.2:80\",direction=\"received\"} 7",
            "mesh_agent_proxy_connections_failed_total{destination=\"10.0.0.3:81\",reason=\"refused\"} 1",
            "mesh_agent_proxy_active_connections 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
