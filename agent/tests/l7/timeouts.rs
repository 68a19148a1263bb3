//! Timeouts of routes: the request timeout and the per-try timeout answer 504 in time, the
//! idle timeout cuts a response whose body stalls. (TCP idle timeouts: tcp.rs.)
use http_body_util::Full;
use serde_json::json;

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn request_and_per_try_timeouts_answer_504_in_time() {
    let mesh = Mesh::start(Spec {
        routes: vec![
            route(
                "per-try",
                Some(1),
                json!({"prefix": "/try"}),
                &[("v1", 1)],
                json!({
                    "retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "ms", "value": 200}, "httpRetryEvents": ["gateway-error"]},
                    "timeout": {"perRequest": {"unit": "s", "value": 5}}}),
            ),
            route(
                "request",
                Some(2),
                json!({"prefix": "/"}),
                &[("v1", 1)],
                json!({"timeout": {"perRequest": {"unit": "ms", "value": 300}}}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    let slow = |path: &str| {
        mesh.get(path)
            .header("x-delay-ms", "3000")
            .body(Full::default())
            .unwrap()
    };
    // The request timeout: 300 ms, well before the 3 s answer.
    let (reply, took) = timed(mesh.send(slow("/slow"))).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert_eq!(mesh.server("v1").hits(), 1);
    // Per try: 200 ms, retried once, then 504 — about 400 ms.
    let (reply, took) = timed(mesh.send(slow("/try"))).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(mesh.server("v1").hits(), 3);
    assert_eq!(mesh.proxy.metric(&retries_sample("v1", "per-try")), 1.0);
    assert_eq!(
        mesh.proxy
            .metric(&requests_sample("v1", "request", 504, "")),
        1.0
    );
    assert_eq!(
        mesh.proxy
            .metric(&requests_sample("v1", "per-try", 504, "")),
        1.0
    );
    // Answers in time pass.
    let reply = mesh
        .send(
            mesh.get("/try")
                .header("x-delay-ms", "20")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((reply.status, reply.served_by()), (200, "v1"));
    assert_eq!(mesh.served_by("/", &[("x-delay-ms", "20")]).await, "v1");
}

#[tokio::test]
async fn the_request_timeout_bounds_all_tries() {
    // Per try 400 ms, three retries, but the request has 600 ms in all.
    let mesh = Mesh::start(Spec {
        routes: vec![route(
            "bounded",
            None,
            json!({"prefix": "/"}),
            &[("v1", 1)],
            json!({
                "retryPolicy": {"maxRetries": 3, "perRetryTimeout": {"unit": "ms", "value": 400}, "httpRetryEvents": ["gateway-error"]},
                "timeout": {"perRequest": {"unit": "ms", "value": 600}}}),
        )],
        ..Spec::default()
    })
    .await;
    let (reply, took) = timed(
        mesh.send(
            mesh.get("/")
                .header("x-delay-ms", "3000")
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(
        took >= Duration::from_millis(580) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    // The first try took 400 ms, the second what was left: never four tries.
    assert_eq!(mesh.server("v1").hits(), 2);
}

#[tokio::test]
async fn a_stalled_response_body_is_cut_by_the_idle_timeout() {
    let mesh = Mesh::start(Spec {
        routes: vec![route(
            "idle",
            None,
            json!({"prefix": "/"}),
            &[("v1", 1)],
            json!({"timeout": {"idle": {"unit": "ms", "value": 300}}}),
        )],
        ..Spec::default()
    })
    .await;
    // Headers at once, the body 3 s later.
    let (reply, took) = timed(
        mesh.send(
            mesh.get("/stall")
                .header("x-body-delay-ms", "3000")
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await;
    assert!(
        reply.body_error.is_some() && !reply.body.contains("hello from"),
        "the stalled body arrived: {reply:?}"
    );
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // A body in time passes.
    let reply = mesh
        .send(
            mesh.get("/")
                .header("x-body-delay-ms", "50")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert!(reply.body.starts_with("hello from v1"), "{reply:?}");
}
