//! What the span exporter counts: spans exported, spans dropped and why, export requests.
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum DropReason {
    /// The export queue was full: the collector is slower than the spans come.
    queue_full,
    /// The collector refused or did not answer the export (or was waited out after such a
    /// failure).
    export_failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are snake_case on the wire
pub enum ExportResult {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    result: ExportResult,
}

#[derive(Clone, Default)]
pub struct TraceMetrics {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
    exports: Family<ExportLabels, Counter>,
}

impl TraceMetrics {
    pub fn exported(&self, spans: usize) {
        self.exported.inc_by(spans as u64);
        self.export(ExportResult::ok);
    }

    pub fn dropped(&self, reason: DropReason, spans: usize) {
        self.dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(spans as u64);
    }

    pub fn export(&self, result: ExportResult) {
        self.exports.get_or_create(&ExportLabels { result }).inc();
    }

    /// The spans dropped for `reason` so far.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.get_or_create(&DropLabels { reason }).get()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_agent_trace_spans_exported",
            "Spans the collector accepted",
            self.exported.clone(),
        );
        registry.register(
            "mesh_agent_trace_spans_dropped",
            "Spans recorded but never exported (queue full, or the collector failed)",
            self.dropped.clone(),
        );
        registry.register(
            "mesh_agent_trace_exports",
            "Export requests sent to the collector, by result",
            self.exports.clone(),
        );
    }
}
