//! The way spans leave: a bounded queue the request path pushes into without ever waiting
//! (a full queue drops the span and counts it), and one task that batches the queue and
//! exports each batch. A collector that fails is waited out (1 s doubling to 30 s) with its
//! batches dropped and counted, so a collector that is down costs spans, not latency or memory.
use std::time::Duration;

use tokio::{
    sync::mpsc::{self, error::TrySendError},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    metrics::{DropReason, ExportResult, TraceMetrics},
    otlp,
    span::RequestSpan,
    transport::{Transport, TransportError},
};
use crate::config::TracingConfig;

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The request path's end of the queue.
#[derive(Clone)]
pub struct SpanQueue {
    sender: mpsc::Sender<RequestSpan>,
    metrics: TraceMetrics,
}

impl SpanQueue {
    /// Queues `span` for export, or drops it (counted) when the queue is full.
    pub fn push(&self, span: RequestSpan) {
        match self.sender.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.metrics.dropped(DropReason::queue_full, 1);
            }
        }
    }
}

/// The exporting task's state.
pub struct Exporter {
    receiver: mpsc::Receiver<RequestSpan>,
    transport: Transport,
    metrics: TraceMetrics,
    max_batch: usize,
    batch_delay: Duration,
    export_timeout: Duration,
    resource: Vec<(String, String)>,
    /// After a failed export: no export before this.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// A queue of `config.max_queue_spans` and the exporter that empties it.
pub fn channel(
    config: &TracingConfig,
    metrics: TraceMetrics,
) -> Result<(SpanQueue, Exporter), TransportError> {
    let (sender, receiver) = mpsc::channel(config.max_queue_spans);
    let exporter = Exporter {
        receiver,
        transport: Transport::new(config)?,
        metrics: metrics.clone(),
        max_batch: config.max_batch_spans,
        batch_delay: config.batch_delay,
        export_timeout: config.export_timeout,
        resource: config.resource.clone().into_iter().collect(),
        retry_at: None,
        backoff: BACKOFF_FIRST,
    };
    Ok((SpanQueue { sender, metrics }, exporter))
}

impl Exporter {
    /// Exports batches until `stop`, then what is queued once more.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let received = tokio::select! {
                received = self.receiver.recv_many(&mut batch, self.max_batch) => received,
                () = stop.cancelled() => break,
            };
            if received == 0 {
                break;
            }
            self.fill(&mut batch, &stop).await;
            self.export(std::mem::take(&mut batch)).await;
        }
        // What the request path queued before the stop.
        self.retry_at = None;
        while let Ok(span) = self.receiver.try_recv() {
            batch.push(span);
            if batch.len() == self.max_batch {
                self.export(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.export(batch).await;
        }
    }

    /// Adds to `batch` until it is full or `batch_delay` has passed since its first span.
    async fn fill(&mut self, batch: &mut Vec<RequestSpan>, stop: &CancellationToken) {
        let until = Instant::now() + self.batch_delay;
        while batch.len() < self.max_batch {
            let room = self.max_batch - batch.len();
            tokio::select! {
                received = self.receiver.recv_many(batch, room) => if received == 0 { return },
                () = tokio::time::sleep_until(until) => return,
                () = stop.cancelled() => return,
            }
        }
    }

    async fn export(&mut self, batch: Vec<RequestSpan>) {
        let spans = batch.len();
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.metrics.dropped(DropReason::export_failed, spans);
            return;
        }
        let request = otlp::request(batch, &self.resource);
        match self.transport.send(request, self.export_timeout).await {
            Ok(()) => {
                if self.retry_at.take().is_some() {
                    info!("trace collector accepts spans again");
                }
                self.backoff = BACKOFF_FIRST;
                self.metrics.exported(spans);
            }
            Err(error) => {
                if self.retry_at.is_none() {
                    warn!(%error, spans, "trace export failed; dropping spans until the collector answers (mesh_agent_trace_spans_dropped_total)");
                }
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.metrics.export(ExportResult::error);
                self.metrics.dropped(DropReason::export_failed, spans);
            }
        }
    }
}

/// The exporter, running.
pub struct ExportTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ExportTask {
    pub fn spawn(exporter: Exporter) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(exporter.run(stop.clone()));
        Self { stop, task }
    }

    /// Exports what is queued and ends, giving up after `within`.
    pub async fn finish(self, within: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(within, self.task).await.is_err() {
            warn!(
                ?within,
                "trace export did not finish; the spans still queued are lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::OtlpProtocol,
        telemetry::trace::span::{SpanKind, tests::sample},
    };

    fn config(endpoint: String, queue: usize) -> TracingConfig {
        TracingConfig {
            endpoint,
            protocol: OtlpProtocol::Http,
            sampling_rate: 1.0,
            propagation: Vec::new(),
            max_queue_spans: queue,
            max_batch_spans: queue,
            batch_delay: Duration::from_millis(10),
            export_timeout: Duration::from_millis(500),
            resource: Default::default(),
        }
    }

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let metrics = TraceMetrics::default();
        let config = config(format!("http://127.0.0.1:{}", closed_port()), 4);
        let (queue, _exporter) = channel(&config, metrics.clone()).unwrap();
        for _ in 0..10 {
            queue.push(sample(SpanKind::Client));
        }
        assert_eq!(metrics.dropped_count(DropReason::queue_full), 6);
    }

    #[tokio::test]
    async fn a_collector_that_is_down_costs_the_batch_and_is_waited_out() {
        let metrics = TraceMetrics::default();
        let config = config(format!("http://127.0.0.1:{}", closed_port()), 8);
        let (queue, exporter) = channel(&config, metrics.clone()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(exporter.run(stop.clone()));
        for _ in 0..3 {
            queue.push(sample(SpanKind::Client));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.dropped_count(DropReason::export_failed) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the failed batch is counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Within the back-off the next batch is dropped without a try.
        queue.push(sample(SpanKind::Client));
        stop.cancel();
        task.await.unwrap();
        assert_eq!(metrics.dropped_count(DropReason::export_failed), 4);
    }
}
