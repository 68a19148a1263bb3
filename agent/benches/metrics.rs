//! What observability costs the proxy: recording one request in the per-service metrics
//! (the hot path: a counter, a histogram and two byte counters), rendering one access log line, and a
//! scrape of 10 000 request series.
//!
//! `cargo bench -p mesh-agent --bench metrics` — prints ns per operation and the scrape's time
//! and size. Medians of 5 rounds.
// A test's (or benchmark's) panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    hint::black_box,
    time::{Duration, Instant, UNIX_EPOCH},
};

use mesh_agent::telemetry::{
    access_log::{Entry, RequestHead, render},
    metrics::{Metrics, RequestOutcome, RouteLabels, classic_text},
};
use mesh_model::access_log::{DEFAULT_TEXT_FORMAT, LogFormat};

const ROUNDS: usize = 5;

fn labels(service: usize, route: usize) -> RouteLabels {
    RouteLabels {
        reporter: "outbound",
        source_virtual_node: "shop/frontend".into(),
        destination_virtual_service: format!("svc-{service}.shop.local"),
        destination_virtual_node: format!("shop/svc-{service}-v1"),
        route: format!("route-{route}"),
    }
}

fn outcome(i: u64) -> RequestOutcome {
    RequestOutcome {
        response_code: 200,
        grpc_status: None,
        seconds: 0.000_3 + (i % 7) as f64 * 0.001,
        request_bytes: 0,
        response_bytes: 512 + i % 1024,
    }
}

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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let metrics = Metrics::default();
    let route = labels(0, 0);
    // A keep-alive connection's requests: the route's series are resolved once.
    let mut recorder = metrics.mesh.recorder(&route);
    let cached = ns_per_op(1_000_000, |i| {
        recorder.record(&metrics.mesh, black_box(outcome(i)));
    });
    println!(
        "record one request, series cached by the connection (counter, histogram, 2 byte counters): {cached:.0} ns/op"
    );
    // A connection's first request: the four series are looked up by their labels.
    let first = ns_per_op(200_000, |i| {
        metrics
            .mesh
            .recorder(black_box(&route))
            .record(&metrics.mesh, outcome(i));
    });
    println!("record a connection's first request (series looked up by labels): {first:.0} ns/op");

    // Both cores recording into the same series: the contention the proxy's threads see.
    let threads = 2;
    let per_thread = 500_000u64;
    let contended = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        scope.spawn(|| {
                            let mut recorder = metrics.mesh.recorder(&route);
                            for i in 0..per_thread {
                                recorder.record(&metrics.mesh, black_box(outcome(i)));
                            }
                        });
                    }
                });
                start.elapsed()
            })
            .collect(),
    );
    println!(
        "record one request, {threads} threads on one series: {:.0} ns/op per thread",
        contended.as_nanos() as f64 / per_thread as f64
    );

    let format = LogFormat::text(DEFAULT_TEXT_FORMAT).expect("Envoy's default format parses");
    let mut entry = Entry::new(
        "10.0.0.5:40000".parse().expect("address"),
        "10.0.0.9:8080".parse().expect("address"),
        "shop/frontend",
    );
    entry.start = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    entry.protocol = Some("HTTP/1.1");
    entry.request = Some(RequestHead {
        method: http::Method::GET,
        uri: "/products/42?currency=EUR".parse().expect("uri"),
        authority: "products.shop.local:8080".into(),
        headers: [
            ("user-agent", "curl/8.0"),
            ("x-request-id", "3f1c8e2a-5b7d-4e9f-a1c2-7d8e9f0a1b2c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.parse().expect("name"), v.parse().expect("value")))
        .collect(),
    });
    entry.response_code = Some(200);
    entry.bytes_sent = 512;
    entry.upstream_host = Some("10.0.1.7:8080".parse().expect("address"));
    let line = ns_per_op(200_000, |_| {
        black_box(render(black_box(&format), black_box(&entry)));
    });
    println!("render one access log line (Envoy's default format): {line:.0} ns/op");

    // 10 000 request series: 100 services × 100 routes, each seen once.
    let scraped = Metrics::default();
    for service in 0..100 {
        for route in 0..100 {
            scraped
                .mesh
                .recorder(&labels(service, route))
                .record(&scraped.mesh, outcome(0));
        }
    }
    let mut size = (0, 0, 0);
    let openmetrics = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                let text = scraped.encode().expect("encodes");
                let took = start.elapsed();
                size = (
                    text.len(),
                    text.lines().filter(|l| !l.starts_with('#')).count(),
                    0,
                );
                took
            })
            .collect(),
    );
    let text = scraped.encode().expect("encodes");
    let classic = median(
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                size.2 = black_box(classic_text(&text)).len();
                start.elapsed()
            })
            .collect(),
    );
    println!(
        "scrape of 10 000 request series ({} samples with the histograms): OpenMetrics {:.1} ms, {:.1} MB; classic text +{:.1} ms, {:.1} MB",
        size.1,
        openmetrics.as_secs_f64() * 1e3,
        size.0 as f64 / 1e6,
        classic.as_secs_f64() * 1e3,
        size.2 as f64 / 1e6,
    );
}
