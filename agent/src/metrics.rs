//! Prometheus metrics: the proxy's per-destination connection and byte counters, and the
//! redirect programs' in-kernel counters, read from their per-CPU map at scrape time.
use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use agent_common::Counter as BpfCounter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::redirect::RedirectCounters;

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
    /// Anything else; the log line says what.
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub destination: String,
    pub reason: FailureReason,
}

/// Metrics the proxy updates as connections come and go.
#[derive(Clone, Default)]
pub struct ProxyMetrics {
    opened: Family<DestinationLabels, Counter>,
    closed: Family<DestinationLabels, Counter>,
    failed: Family<FailureLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    active: Gauge,
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

    fn register(&self, registry: &mut Registry) {
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

/// Everything /metrics shows.
pub struct Metrics {
    registry: Registry,
    pub proxy: ProxyMetrics,
}

impl Metrics {
    pub fn new(enrolled: Arc<AtomicI64>, redirect: Option<Arc<RedirectCounters>>) -> Self {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics::default();
        proxy.register(&mut registry);
        registry.register_collector(Box::new(AgentCollector { enrolled, redirect }));
        Self { registry, proxy }
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Values read at scrape time: the eBPF counters and the enrollment count.
#[derive(Debug)]
struct AgentCollector {
    enrolled: Arc<AtomicI64>,
    redirect: Option<Arc<RedirectCounters>>,
}

fn counter_label(counter: BpfCounter) -> &'static str {
    match counter {
        BpfCounter::Redirected => "redirected",
        BpfCounter::Excluded => "excluded",
        BpfCounter::NotEnrolled => "not_enrolled",
        BpfCounter::ProxyOwn => "proxy_own",
        BpfCounter::RecordFailed => "record_failed",
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let enrolled = ConstGauge::new(self.enrolled.load(Ordering::Relaxed));
        enrolled.encode(encoder.encode_descriptor(
            "mesh_agent_enrolled_netns",
            "Pod network namespaces whose outbound TCP is redirected",
            None,
            enrolled.metric_type(),
        )?)?;
        let Some(redirect) = &self.redirect else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "mesh_agent_redirect_connects",
            "TCP connects seen by the connect4 program in the node cgroup, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (counter, value) in redirect.read() {
            let labels = [("result", counter_label(counter))];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lifecycle_is_counted() {
        let metrics = Metrics::new(Arc::new(AtomicI64::new(2)), None);
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
            "mesh_agent_enrolled_netns 2",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
