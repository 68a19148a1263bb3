//! TCP routes: each connection picks a target by weight and is relayed to it; a connection
//! on which nothing moves is cut after the route's idle timeout.
use std::time::Duration;

use http_body_util::Full;
use serde_json::json;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::harness::*;

#[tokio::test]
async fn tcp_routes_split_connections_by_weight() {
    let mesh = Mesh::start(Spec {
        protocol: "tcp",
        routes: vec![route_of_kind(
            "tcpRoute",
            "tcp",
            None,
            serde_json::Value::Null,
            &[("v1", 3), ("v2", 1)],
            json!({}),
        )],
        ..Spec::default()
    })
    .await;
    // HTTP over the TCP route, a connection per request: each connection picks a target.
    let mut client = Http1::connect(mesh.listener(PORT)).await;
    let mut same_connection = Vec::new();
    for _ in 0..5 {
        let reply = client
            .send(mesh.get("/").body(Full::default()).unwrap())
            .await;
        same_connection.push(reply.served_by().to_owned());
    }
    assert!(
        same_connection.windows(2).all(|w| w[0] == w[1]),
        "one connection, one target: {same_connection:?}"
    );
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..400 {
        match mesh.served_by("/", &[]).await.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("served by {other:?}"),
        }
    }
    // 100 expected for v2, σ ≈ 8.7.
    assert!((60..=140).contains(&v2), "v1 {v1}, v2 {v2}");
    let metrics = mesh.proxy.metrics_text();
    let opened = |cluster: &str| {
        metric_value(
            &metrics,
            &format!("mesh_agent_proxy_connections_opened_total{{destination=\"{cluster}\"}}"),
        )
    };
    let first = usize::from(same_connection[0] == "v2");
    assert_eq!(opened("m/v2/8080"), (v2 + first) as f64, "{metrics}");
    assert_eq!(opened("m/v1/8080"), (v1 + 1 - first) as f64, "{metrics}");
}

#[tokio::test]
async fn an_idle_tcp_connection_is_cut_after_the_idle_timeout() {
    let mesh = Mesh::start(Spec {
        protocol: "tcp",
        routes: vec![route_of_kind(
            "tcpRoute",
            "tcp",
            None,
            serde_json::Value::Null,
            &[("v1", 1)],
            json!({"timeout": {"idle": {"unit": "ms", "value": 300}}}),
        )],
        ..Spec::default()
    })
    .await;
    // Traffic keeps it open: a request every 100 ms for 600 ms.
    let mut client = Http1::connect(mesh.listener(PORT)).await;
    for _ in 0..6 {
        let reply = client
            .send(mesh.get("/").body(Full::default()).unwrap())
            .await;
        assert_eq!(reply.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing moves: cut.
    let mut idle = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    let (read, took) = timed(tokio::time::timeout(TIMEOUT, idle.read(&mut [0u8; 16]))).await;
    let read = read.expect("cut before the test's timeout");
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "read {read:?} on an idle connection"
    );
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2000),
        "{took:?}"
    );
}
