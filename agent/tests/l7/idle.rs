//! Idle HTTP/1.1 connections are parked between requests (hyper's buffers given back) and
//! served again on their next request; a connection with a request in flight, a slow
//! response body or an upgrade is never parked. Raw bytes on one client socket, so a
//! reconnect could not hide a parked connection that lost its way.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::*;

const PARKED: &str = "mesh_http_connections_parked";
/// Longer than a connection can stay idle unparked (one to two seconds).
const PARKING_WAIT: Duration = Duration::from_millis(2500);

async fn mesh() -> Mesh {
    Mesh::start(Spec {
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.m.local:8080\r\n{extra}\r\n").into_bytes()
}

/// Reads until `times` whole answers of v1 are in, failing on an early close.
async fn answers(stream: &mut TcpStream, times: usize) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.matches("hello from v1").count() >= times && text.ends_with('\n') {
            return text;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("the proxy closed the connection; got {text:?}"),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(error)) => panic!("read failed: {error}; got {text:?}"),
            Err(_) => panic!("{times} answers not in time; got {text:?}"),
        }
    }
}

#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_requests() {
    let mesh = mesh().await;
    let mut client = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    client.write_all(&get("/first", "")).await.unwrap();
    assert!(answers(&mut client, 1).await.contains("path=/first"));
    assert_eq!(mesh.proxy.metric(PARKED), 0.0, "busy a moment ago");

    tokio::time::sleep(PARKING_WAIT).await;
    assert_eq!(mesh.proxy.metric(PARKED), 1.0, "idle long enough to park");

    // Two pipelined requests, the second with a body, wake it: both answered, in order,
    // on the same socket.
    let mut pipelined = get("/second", "");
    pipelined.extend_from_slice(
        b"POST /third HTTP/1.1\r\nHost: api.m.local:8080\r\ncontent-length: 5\r\n\r\nhello",
    );
    client.write_all(&pipelined).await.unwrap();
    let text = answers(&mut client, 2).await;
    let (second, third) = (text.find("path=/second"), text.find("path=/third"));
    assert!(second.is_some() && second < third, "{text}");
    assert!(text.contains("x-body-length: 5"), "{text}");
    assert_eq!(mesh.proxy.metric(PARKED), 0.0, "served again");

    // Parked a second time, then closed by the client: the gauge comes back down.
    tokio::time::sleep(PARKING_WAIT).await;
    assert_eq!(mesh.proxy.metric(PARKED), 1.0);
    drop(client);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while mesh.proxy.metric(PARKED) != 0.0 {
        assert!(tokio::time::Instant::now() < deadline, "still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn slow_answers_and_slow_bodies_are_never_cut_by_parking() {
    let mesh = mesh().await;
    let mut client = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    // Nothing comes back for longer than a connection may idle: a request in flight.
    client
        .write_all(&get("/slow-head", "x-delay-ms: 2500\r\n"))
        .await
        .unwrap();
    assert!(answers(&mut client, 1).await.contains("path=/slow-head"));
    // The head at once, the body that long after: a response still being sent.
    client
        .write_all(&get("/slow-body", "x-body-delay-ms: 2500\r\n"))
        .await
        .unwrap();
    assert!(answers(&mut client, 1).await.contains("path=/slow-body"));
    assert_eq!(mesh.proxy.metric(PARKED), 0.0);
}

#[tokio::test]
async fn an_http2_connection_is_never_parked() {
    let mesh = mesh().await;
    let mut client = Http2::connect(mesh.listener(PORT)).await;
    let reply = client
        .send(mesh.get("/h2").body(Default::default()).unwrap())
        .await;
    assert_eq!(reply.served_by(), "v1");
    tokio::time::sleep(PARKING_WAIT).await;
    assert_eq!(mesh.proxy.metric(PARKED), 0.0);
    let reply = client
        .send(mesh.get("/h2").body(Default::default()).unwrap())
        .await;
    assert_eq!(reply.served_by(), "v1");
}
