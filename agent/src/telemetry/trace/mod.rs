//! Traces: a span per request on each side the proxy handles it (outbound: the caller's
//! client span; inbound: the destination's server span; gateway: its own), its context
//! continued from W3C, X-Ray and B3 headers and passed on so the applications' spans join,
//! exported over OTLP in batches that never hold a request up (docs/tracing.md).
//!
//! Built on opentelemetry-proto's generated types with the proxy's own tonic and hyper
//! clients rather than the OpenTelemetry SDK: the span's shape is fixed, so the request path
//! fills plain fields and the exporter builds OTLP off it, and the queue's drops are
//! counted on /metrics, which the SDK's batch processor does not expose.
mod b3;
mod exporter;
mod ids;
mod metrics;
mod otlp;
mod propagation;
mod sampler;
mod span;
mod tracer;
mod transport;
mod w3c;
mod xray;

pub use exporter::ExportTask;
pub use metrics::TraceMetrics;
pub use span::{MeshNames, Outcome, RequestFacts, RequestSpan, SpanKind};
pub use tracer::{SpanPlace, Tracer};
pub use transport::TransportError;
