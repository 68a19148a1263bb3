//! What a span costs the request path: continuing or starting the trace and writing the next
//! hop's headers (`Tracer::begin`), and handing the finished span to the export queue — with
//! room in it, and full (a collector that is down: the span is dropped and counted).
//!
//! `cargo bench -p mesh-agent --bench traces` — prints ns per operation. Medians of 5 rounds.
// A benchmark's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    hint::black_box,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, HeaderValue};
use mesh_agent::{
    config::{OtlpProtocol, Propagation, TracingConfig},
    telemetry::trace::{
        MeshNames, Outcome, RequestFacts, RequestSpan, SpanKind, SpanPlace, TraceMetrics, Tracer,
    },
};

const ROUNDS: usize = 5;

/// Median over rounds of the time per call of `op`, in ns.
fn ns_per_op(iterations: u64, mut op: impl FnMut(u64)) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..iterations {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn tracer(queue: usize, propagation: Vec<Propagation>) -> Tracer {
    let config = TracingConfig {
        // Nothing listens there; the exporter is not even started.
        endpoint: "http://127.0.0.1:9".into(),
        protocol: OtlpProtocol::Http,
        sampling_rate: 1.0,
        propagation,
        max_queue_spans: queue,
        max_batch_spans: 1,
        batch_delay: Duration::from_secs(1),
        export_timeout: Duration::from_secs(1),
        resource: Default::default(),
    };
    Tracer::new(&config, TraceMetrics::default()).unwrap().0
}

/// A span as the HTTP engine fills it at a request's end (its strings cloned there).
fn span(place: SpanPlace) -> RequestSpan {
    RequestSpan {
        trace_id: place.trace_id,
        span_id: place.span_id,
        parent: place.parent,
        kind: SpanKind::Client,
        start: SystemTime::now(),
        first_byte: Some(Duration::from_micros(300)),
        duration: Duration::from_micros(350),
        request: RequestFacts {
            method: http::Method::GET,
            path: "/products/list".into(),
            authority: "products.shop.local:8080".into(),
            protocol: "1.1",
            request_id: Some("4f1c2d0e-6b7a-4c11-9e0f-5a6b7c8d9e0f".into()),
            client: SocketAddr::from(([10, 0, 0, 2], 40000)),
        },
        names: MeshNames {
            reporter: "outbound",
            virtual_node: "shop/frontend".into(),
            source_virtual_node: Some("shop/frontend".into()),
            virtual_service: Some("products.shop.local".into()),
            destination_virtual_node: Some("shop/products-v1".into()),
            route: Some("products".into()),
            cluster: Some("shop/products-v1/8080".into()),
            upstream_host: Some(SocketAddr::from(([10, 0, 0, 7], 8080))),
        },
        outcome: Outcome {
            response_code: 200,
            response_bytes: 512,
            ..Default::default()
        },
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();

    let w3c = tracer(1, vec![Propagation::W3c]);
    let started = ns_per_op(200_000, |_| {
        let mut headers = HeaderMap::new();
        black_box(w3c.begin(&mut headers));
    });
    println!("begin: no context arrives, start a trace, write traceparent: {started:.0} ns/op");
    let incoming =
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let continued = ns_per_op(200_000, |_| {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", incoming.clone());
        black_box(w3c.begin(&mut headers));
    });
    println!("begin: continue a traceparent, rewrite it: {continued:.0} ns/op");
    let all = tracer(
        1,
        vec![
            Propagation::W3c,
            Propagation::Xray,
            Propagation::B3,
            Propagation::B3multi,
        ],
    );
    let every_format = ns_per_op(200_000, |_| {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", incoming.clone());
        black_box(all.begin(&mut headers));
    });
    println!("begin: continue a traceparent, write all four formats: {every_format:.0} ns/op");

    let mut headers = HeaderMap::new();
    let place = w3c.begin(&mut headers).unwrap();
    const QUEUED: u64 = 20_000;
    let roomy = tracer(QUEUED as usize * ROUNDS + 1, vec![Propagation::W3c]);
    let queued = ns_per_op(QUEUED, |_| roomy.record(span(place)));
    println!("record: fill the span, queue it (room in the queue): {queued:.0} ns/op");
    // The first span fills the one-span queue; every other is dropped (counted).
    let full = ns_per_op(200_000, |_| w3c.record(span(place)));
    println!("record: fill the span, queue full (collector down): dropped, {full:.0} ns/op");
}
