//! Connection pools (App Mesh's circuit breakers): requests past the pool's connections and
//! pending queue (HTTP/1.1) or its concurrent requests (HTTP/2) are answered 503 at once and
//! counted as overflows.
use std::time::Duration;

use http_body_util::Full;
use serde_json::json;

use crate::harness::*;

/// Sends `count` requests at once, each on a connection of its own; their statuses and
/// times, in completion order.
async fn at_once(mesh: &Mesh, count: usize, delay_ms: u64) -> Vec<(u16, Duration)> {
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let request = mesh
                .get("/slow")
                .header("x-delay-ms", delay_ms.to_string())
                .body(Full::default())
                .unwrap();
            let proxy = mesh.listener(PORT);
            tokio::spawn(async move {
                let (reply, took) = timed(send_http1(proxy, request)).await;
                (reply.status, took)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn a_full_http1_pool_answers_503_and_counts_overflows() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        listener_extra: json!({"connectionPool": {"http": {"maxConnections": 1, "maxPendingRequests": 1}}}),
        ..Spec::default()
    })
    .await;
    // Six slow requests at once: one is served, one waits for the connection, four overflow.
    let results = at_once(&mesh, 6, 700).await;
    let ok: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .collect();
    let overflowed: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert_eq!((ok.len(), overflowed.len()), (2, 4), "{results:?}");
    // The overflows are answered at once, the waiting one after the first is done.
    assert!(
        overflowed
            .iter()
            .all(|(_, took)| *took < Duration::from_millis(650)),
        "{results:?}"
    );
    assert!(
        ok.iter()
            .any(|(_, took)| *took >= Duration::from_millis(1350)),
        "{results:?}"
    );
    assert_eq!(mesh.server("v1").hits(), 2);
    let metrics = mesh.proxy.metrics_text();
    assert_eq!(
        metric_value(
            &metrics,
            r#"mesh_upstream_overflows_total{cluster="m/v1/8080"}"#
        ),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, &requests_sample("v1", "all", 503, "")),
        4.0,
        "{metrics}"
    );
    // The pool is free again.
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
}

#[tokio::test]
async fn a_full_http2_pool_answers_503_and_counts_overflows() {
    let mesh = Mesh::start(Spec {
        protocol: "http2",
        routes: all_to_v1_over_http2(),
        listener_extra: json!({"connectionPool": {"http2": {"maxRequests": 2}}}),
        ..Spec::default()
    })
    .await;
    let client = Http2::connect(mesh.listener(PORT)).await;
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let mut client = client.clone();
            let request = http::Request::get(format!("http://{SERVICE}:{PORT}/slow"))
                .header("x-delay-ms", "500")
                .body(Full::default())
                .unwrap();
            tokio::spawn(async move { client.send(request).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(
        mesh.proxy
            .metric(r#"mesh_upstream_overflows_total{cluster="m/v1/8080"}"#),
        3.0
    );
}
