//! The proxy's tracer: per request, it continues the caller's trace (or starts one), decides
//! whether the request is recorded, and tells the next hop; the finished span goes to the
//! export queue.
use std::sync::Arc;

use http::HeaderMap;

use super::{
    exporter::{self, ExportTask, Exporter, SpanQueue},
    ids::{SpanId, TraceId},
    metrics::TraceMetrics,
    propagation::{self, Formats, Outgoing},
    sampler::Sampler,
    span::RequestSpan,
    transport::TransportError,
};
use crate::config::TracingConfig;

pub struct Tracer {
    sampler: Sampler,
    /// The formats written on every forwarded request.
    propagation: Formats,
    queue: SpanQueue,
}

/// Where a recorded request's span sits in its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanPlace {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
}

impl Tracer {
    /// The tracer of `config` and the exporter task it feeds (to be spawned).
    pub fn new(
        config: &TracingConfig,
        metrics: TraceMetrics,
    ) -> Result<(Self, Exporter), TransportError> {
        let (queue, exporter) = exporter::channel(config, metrics)?;
        let tracer = Self {
            sampler: Sampler::new(config.sampling_rate),
            propagation: Formats::of(&config.propagation),
            queue,
        };
        Ok((tracer, exporter))
    }

    /// The tracer of `config`, its exporter running on the current runtime.
    pub fn spawn(
        config: &TracingConfig,
        metrics: TraceMetrics,
    ) -> Result<(Arc<Self>, ExportTask), TransportError> {
        let (tracer, exporter) = Self::new(config, metrics)?;
        Ok((Arc::new(tracer), ExportTask::spawn(exporter)))
    }

    /// Reads the trace context of a request about to be forwarded and writes the proxy's
    /// span into its headers, in the configured formats and those it arrived in. The span's
    /// place if the trace is sampled; `None` if not (the next hop is told so).
    pub fn begin(&self, headers: &mut HeaderMap) -> Option<SpanPlace> {
        let extracted = propagation::extract(headers);
        let trace_id = extracted
            .context
            .map_or_else(TraceId::generate, |c| c.trace_id);
        let parent = extracted.context.and_then(|c| c.span_id);
        let sampled = self.sampler.sample(trace_id, extracted.sampled());
        let place = SpanPlace {
            trace_id,
            span_id: SpanId::generate(),
            parent,
        };
        let outgoing = Outgoing {
            trace_id,
            span_id: place.span_id,
            parent,
            sampled,
        };
        let formats = self.propagation.union(extracted.arrived);
        propagation::inject(headers, formats, &outgoing);
        sampled.then_some(place)
    }

    /// Queues a finished span for export (never waits).
    pub fn record(&self, span: RequestSpan) {
        self.queue.push(span);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;
    use crate::config::{OtlpProtocol, Propagation};

    fn tracer(rate: f64, propagation: Vec<Propagation>) -> Tracer {
        let config = TracingConfig {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
            sampling_rate: rate,
            propagation,
            max_queue_spans: 16,
            max_batch_spans: 16,
            batch_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
            resource: Default::default(),
        };
        Tracer::new(&config, TraceMetrics::default()).unwrap().0
    }

    #[tokio::test]
    async fn continues_an_xray_trace_and_tells_the_next_hop_in_both_formats() {
        let tracer = tracer(0.0, vec![Propagation::W3c]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-trace-id",
            HeaderValue::from_static(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            ),
        );
        let place = tracer.begin(&mut headers).expect("the caller sampled it");
        assert_eq!(place.trace_id.hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(place.parent.unwrap().hex(), "53995c3f42cd8ad8");
        let span = place.span_id.hex();
        assert_eq!(
            headers["traceparent"],
            format!("00-5759e988bd862e3fe1be46a994272793-{span}-01").as_str()
        );
        assert_eq!(
            headers["x-amzn-trace-id"],
            format!("Root=1-5759e988-bd862e3fe1be46a994272793;Parent={span};Sampled=1").as_str()
        );
    }

    #[tokio::test]
    async fn starts_a_trace_and_passes_an_unsampled_decision_on() {
        let tracer = tracer(0.0, vec![Propagation::B3multi]);
        let mut headers = HeaderMap::new();
        assert_eq!(tracer.begin(&mut headers), None, "rate 0 samples nothing");
        assert_eq!(headers["x-b3-sampled"], "0");
        assert!(!headers.contains_key("x-b3-parentspanid"));
        let tracer = self::tracer(1.0, vec![Propagation::W3c]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert_eq!(
            tracer.begin(&mut headers),
            None,
            "the caller's 'not sampled' stands"
        );
        assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
