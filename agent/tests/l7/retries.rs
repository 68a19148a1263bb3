//! Retry policies: which events are retried (server errors, gateway errors, connection
//! errors), how many times, and that a request body too long to keep is sent once.
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::harness::*;

fn retry_route(name: &str, prefix: &str, node: &str, policy: Value) -> Value {
    route(
        name,
        None,
        json!({"prefix": prefix}),
        &[(node, 1)],
        json!({ "retryPolicy": policy }),
    )
}

#[tokio::test]
async fn server_errors_are_retried_up_to_max_retries() {
    let mesh = Mesh::start(Spec {
        routes: vec![retry_route(
            "retry",
            "/",
            "v1",
            json!({"maxRetries": 2, "perRetryTimeout": {"unit": "s", "value": 5}, "httpRetryEvents": ["server-error"]}),
        )],
        // v1 fails its first two requests.
        v1: vec![ServerSpec::named("v1").failing_first(2)],
        ..Spec::default()
    })
    .await;
    let retries = retries_sample("v1", "retry");
    // Two 503s, then the third try succeeds.
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
    assert_eq!(mesh.server("v1").hits(), 3);
    assert_eq!(mesh.proxy.metric(&retries), 2.0);
    // Always 500: one try and two retries, then the last answer goes to the client.
    let reply = mesh
        .send(
            mesh.get("/")
                .header("x-status", "500")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((reply.status, reply.served_by()), (500, "v1"), "{reply:?}");
    assert_eq!(mesh.server("v1").hits(), 6);
    assert_eq!(mesh.proxy.metric(&retries), 4.0);
    // A 404 is not a server error: no retry.
    let reply = mesh
        .send(
            mesh.get("/")
                .header("x-status", "404")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(mesh.server("v1").hits(), 7);
    assert_eq!(mesh.proxy.metric(&retries), 4.0);
    let metrics = mesh.proxy.metrics_text();
    assert_eq!(
        metric_value(&metrics, &requests_sample("v1", "retry", 200, "")),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, &requests_sample("v1", "retry", 500, "")),
        1.0
    );
}

#[tokio::test]
async fn gateway_errors_are_502_to_504_only() {
    let mesh = Mesh::start(Spec {
        routes: vec![retry_route(
            "gateway",
            "/",
            "v1",
            json!({"maxRetries": 3, "perRetryTimeout": {"unit": "s", "value": 5}, "httpRetryEvents": ["gateway-error"]}),
        )],
        ..Spec::default()
    })
    .await;
    let retries = retries_sample("v1", "gateway");
    let mut expected_hits = 0;
    for (status, tries) in [(500, 1), (501, 1), (502, 4), (503, 4), (504, 4), (505, 1)] {
        let reply = mesh
            .send(
                mesh.get("/")
                    .header("x-status", status.to_string())
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, status, "{reply:?}");
        expected_hits += tries;
        assert_eq!(mesh.server("v1").hits(), expected_hits, "status {status}");
    }
    assert_eq!(mesh.proxy.metric(&retries), 9.0);
}

#[tokio::test]
async fn connection_errors_are_retried_on_another_endpoint() {
    let policy = json!({"maxRetries": 3, "perRetryTimeout": {"unit": "s", "value": 5}, "tcpRetryEvents": ["connection-error"]});
    let mesh = Mesh::start(Spec {
        routes: vec![
            retry_route("mixed", "/mixed", "v1", policy.clone()),
            retry_route("dead", "/dead", "v2", policy),
        ],
        // v1: one endpoint refuses connections, the other answers; v2: nobody listens.
        v1: vec![ServerSpec::dead("v1-dead"), ServerSpec::named("v1")],
        v2: vec![ServerSpec::dead("v2-dead")],
        ..Spec::default()
    })
    .await;
    for _ in 0..20 {
        assert_eq!(mesh.served_by("/mixed", &[]).await, "v1");
    }
    let retried = mesh.proxy.metric(&retries_sample("v1", "mixed"));
    assert!(
        retried >= 1.0,
        "20 requests over a dead and a live endpoint, none retried"
    );
    assert_eq!(mesh.server("v1").hits(), 20);
    // Every try fails: the first and three retries, then 503.
    let reply = mesh
        .send(mesh.get("/dead").body(Full::default()).unwrap())
        .await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(mesh.proxy.metric(&retries_sample("v2", "dead")), 3.0);
    // A 5xx answer is not a connection error.
    let reply = mesh
        .send(
            mesh.get("/mixed")
                .header("x-status", "503")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((reply.status, reply.served_by()), (503, "v1"));
    assert_eq!(mesh.server("v1").hits(), 21);
}

#[tokio::test]
async fn a_request_body_too_long_to_keep_is_not_retried() {
    let mesh = Mesh::start(Spec {
        routes: vec![retry_route(
            "retry",
            "/",
            "v1",
            json!({"maxRetries": 2, "perRetryTimeout": {"unit": "s", "value": 5}, "httpRetryEvents": ["server-error"]}),
        )],
        v1: vec![ServerSpec::named("v1").failing_first(2)],
        ..Spec::default()
    })
    .await;
    let post = |body: Bytes| {
        request_to(SERVICE, PORT, "POST", "/upload")
            .body(Full::new(body))
            .unwrap()
    };
    // 100 KiB: more than the proxy keeps for a retry, so the first 503 is the answer; the
    // body still reached the server whole.
    let reply = mesh.send(post(Bytes::from(vec![b'x'; 100 * 1024]))).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("x-body-length"), (100 * 1024).to_string());
    assert_eq!(mesh.server("v1").hits(), 1);
    let retries = retries_sample("v1", "retry");
    assert_eq!(mesh.proxy.metric(&retries), 0.0);
    // 60 KiB is kept: the second 503 is retried, and the retry carries the whole body.
    let reply = mesh.send(post(Bytes::from(vec![b'y'; 60 * 1024]))).await;
    assert_eq!((reply.status, reply.served_by()), (200, "v1"), "{reply:?}");
    assert_eq!(reply.header("x-body-length"), (60 * 1024).to_string());
    assert_eq!(mesh.server("v1").hits(), 3);
    assert_eq!(mesh.proxy.metric(&retries), 1.0);
}
