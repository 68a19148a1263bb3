//! What the DNS server counts, and its failure log: a line per failure, at most one a second
//! per reason (a pod flooding bad queries must not flood the node's log), each saying how many
//! like it went unsaid since the last.
use std::{
    collections::HashMap,
    net::SocketAddrV4,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
};
use tracing::warn;

use crate::telemetry::metrics::Metrics;

/// How often each failure reason may be logged.
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum QueryResult {
    /// A mesh name, answered by the agent.
    answered,
    /// Sent to the pod's resolver and its answer passed back.
    forwarded,
    /// Neither: the pod got SERVFAIL or REFUSED, or nothing (see `mesh_agent_dns_failures_total`).
    failed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FailureReason {
    /// The query did not come through the capture (sent straight to the server's port, or
    /// from outside the mesh): REFUSED.
    not_captured,
    /// Too many forwarded queries in flight (node-wide or for this pod): SERVFAIL.
    overloaded,
    /// The pod's resolver did not answer in `dns.forward_timeout`: SERVFAIL.
    timeout,
    /// The pod's resolver could not be reached or broke the exchange: SERVFAIL.
    upstream_error,
    /// No VIP left in `dns.vip_cidr`: SERVFAIL.
    vip_range_full,
    /// A query above the size limit, or a TCP message cut short: dropped.
    malformed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    result: QueryResult,
    /// The question's type (`A`, `AAAA`, …; `other` beyond the common ones).
    query_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reason: FailureReason,
}

#[derive(Clone, Default)]
pub struct DnsMetrics {
    queries: Family<QueryLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    log: Arc<Mutex<HashMap<FailureReason, (Instant, u64)>>>,
}

impl DnsMetrics {
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "mesh_agent_dns_queries",
            "DNS queries of enrolled pods, by result and question type",
            self.queries.clone(),
        );
        metrics.register(
            "mesh_agent_dns_failures",
            "DNS queries the agent could neither answer nor forward, by reason",
            self.failures.clone(),
        );
    }

    pub fn query(&self, result: QueryResult, query_type: Option<RecordType>) {
        self.queries
            .get_or_create(&QueryLabels {
                result,
                query_type: type_label(query_type),
            })
            .inc();
    }

    /// Counts a failed query and logs it (rate-limited per reason).
    pub fn failed(
        &self,
        reason: FailureReason,
        query_type: Option<RecordType>,
        client: SocketAddrV4,
        detail: &dyn std::fmt::Display,
    ) {
        self.query(QueryResult::failed, query_type);
        self.failures.get_or_create(&FailureLabels { reason }).inc();
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        let now = Instant::now();
        let (last, unsaid) = log.entry(reason).or_insert((now - LOG_EVERY, 0));
        if now.duration_since(*last) < LOG_EVERY {
            *unsaid += 1;
            return;
        }
        let suppressed = std::mem::take(unsaid);
        *last = now;
        warn!(?reason, %client, query_type = type_label(query_type), %detail, suppressed, "DNS query failed");
    }

    #[cfg(test)]
    pub fn encode_for_test(&self) -> String {
        let mut metrics = Metrics::default();
        self.register(&mut metrics);
        metrics.encode().unwrap_or_default()
    }
}

/// A bounded label for a question type: the common ones by name, the rest `other`.
fn type_label(query_type: Option<RecordType>) -> &'static str {
    use RecordType::*;
    match query_type {
        Some(A) => "A",
        Some(AAAA) => "AAAA",
        Some(ANY) => "ANY",
        Some(CNAME) => "CNAME",
        Some(HTTPS) => "HTTPS",
        Some(MX) => "MX",
        Some(NS) => "NS",
        Some(PTR) => "PTR",
        Some(SOA) => "SOA",
        Some(SRV) => "SRV",
        Some(SVCB) => "SVCB",
        Some(TXT) => "TXT",
        Some(_) => "other",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_result_and_type() {
        let metrics = DnsMetrics::default();
        metrics.query(QueryResult::answered, Some(RecordType::A));
        metrics.query(QueryResult::forwarded, Some(RecordType::CAA));
        let client = "10.0.0.1:5353".parse().unwrap();
        metrics.failed(
            FailureReason::timeout,
            Some(RecordType::AAAA),
            client,
            &"slow",
        );
        metrics.failed(
            FailureReason::timeout,
            Some(RecordType::AAAA),
            client,
            &"slow",
        );
        let text = metrics.encode_for_test();
        for line in [
            "mesh_agent_dns_queries_total{result=\"answered\",query_type=\"A\"} 1",
            "mesh_agent_dns_queries_total{result=\"forwarded\",query_type=\"other\"} 1",
            "mesh_agent_dns_queries_total{result=\"failed\",query_type=\"AAAA\"} 2",
            "mesh_agent_dns_failures_total{reason=\"timeout\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
