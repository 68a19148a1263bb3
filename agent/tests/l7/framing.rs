//! The header and framing rules the proxy applies to HTTP/1.1 (RFC 9110, RFC 9112) and
//! HTTP/2 (RFC 9113), checked on the wire: raw HTTP/1.1 bytes from the client side, what the
//! endpoint received echoed back by the test server.
use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::Frame;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::*;

async fn mesh() -> Mesh {
    Mesh::start(Spec {
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await
}

/// Writes `request` on a new connection to the proxy and reads until the peer closes or
/// `until` appears `times` times in what came back.
async fn exchange(mesh: &Mesh, request: &[u8], until: &str, times: usize) -> String {
    let mut stream = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until(&mut stream, until, times).await
}

async fn read_until(stream: &mut TcpStream, until: &str, times: usize) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.matches(until).count() >= times {
            return text;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return text,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no {until:?} ×{times} in time; got {text:?}"),
        }
    }
}

fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn hop_by_hop_and_connection_listed_headers_stop_at_the_proxy() {
    let mesh = mesh().await;
    let response = exchange(
        &mesh,
        b"GET / HTTP/1.1\r\nHost: api.m.local:8080\r\nConnection: keep-alive, x-private\r\n\
          X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
          TE: trailers, gzip\r\nX-End-To-End: kept\r\nContent-Length: 0\r\n\r\n",
        "hello from v1",
        1,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let names = header_of(&response, "x-echo-header-names").unwrap_or_default();
    for gone in ["x-private", "keep-alive", "proxy-connection", "connection"] {
        assert!(
            !names.split(',').any(|n| n == gone),
            "{gone} reached the endpoint: {names}"
        );
    }
    assert!(names.split(',').any(|n| n == "x-end-to-end"), "{names}");
    // Only the `trailers` TE value is forwarded (RFC 9113 §8.2.2, as Envoy does).
    assert_eq!(
        header_of(&response, "x-echo-te"),
        Some("trailers"),
        "{response}"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let mesh = mesh().await;
    let one = "GET /one HTTP/1.1\r\nHost: api.m.local:8080\r\n\r\n";
    let two = "GET /two HTTP/1.1\r\nHost: api.m.local:8080\r\nx-delay-ms: 0\r\n\r\n";
    let response = exchange(&mesh, format!("{one}{two}").as_bytes(), "hello from v1", 2).await;
    let first = response.find("path=/one").expect("the first answer");
    let second = response.find("path=/two").expect("the second answer");
    assert!(first < second, "{response}");
}

#[tokio::test]
async fn chunked_request_bodies_arrive_whole() {
    let mesh = mesh().await;
    let response = exchange(
        &mesh,
        b"POST /upload HTTP/1.1\r\nHost: api.m.local:8080\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "hello from v1",
        1,
    )
    .await;
    assert_eq!(
        header_of(&response, "x-body-length"),
        Some("11"),
        "{response}"
    );
}

#[tokio::test]
async fn smuggling_attempts_are_refused() {
    let mesh = mesh().await;
    // Content-Length and Transfer-Encoding together (RFC 9112 §6.1): the chunked framing
    // wins and the Content-Length is not passed on, so nothing hides a second request.
    let response = exchange(
        &mesh,
        b"POST / HTTP/1.1\r\nHost: api.m.local:8080\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "\r\n\r\n",
        2,
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 400") || !response.contains("path=/smuggled"),
        "{response}"
    );
    if let Some(names) = header_of(&response, "x-echo-header-names") {
        assert!(
            !names.split(',').any(|n| n == "content-length"),
            "a Content-Length beside chunked framing reached the endpoint: {names}"
        );
    }
    let hits_after = mesh.server("v1").hits();
    assert!(hits_after <= 1, "the endpoint saw {hits_after} requests");
    // Two different Content-Length values (RFC 9112 §6.3): a 400, nothing forwarded.
    let response = exchange(
        &mesh,
        b"POST / HTTP/1.1\r\nHost: api.m.local:8080\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "\r\n\r\n",
        1,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_eq!(mesh.server("v1").hits(), hits_after);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let mesh = mesh().await;
    let mut stream = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    stream
        .write_all(
            b"PUT /data HTTP/1.1\r\nHost: api.m.local:8080\r\nContent-Length: 4\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let interim = read_until(&mut stream, "\r\n\r\n", 1).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"data").await.unwrap();
    let response = read_until(&mut stream, "hello from v1", 1).await;
    assert_eq!(
        header_of(&response, "x-body-length"),
        Some("4"),
        "{response}"
    );
}

#[tokio::test]
async fn request_trailers_and_streamed_bodies_pass_over_http2() {
    let mesh = Mesh::start(Spec::http2_to_v1()).await;
    let mut sender = streaming_http2(&mesh).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames = Frames(VecDeque::from([
        Frame::data(Bytes::from(vec![1u8; 100_000])),
        Frame::data(Bytes::from(vec![2u8; 100_000])),
        Frame::trailers(trailers),
    ]));
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{SERVICE}:{PORT}/stream"))
        .body(frames)
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-body-length"], "200000");
    assert_eq!(headers["x-echo-trailer-names"], "x-checksum");
    // An HTTP/2 hop carries :authority, not a Host header (RFC 9113 §8.3.1).
    let names = headers["x-echo-header-names"].to_str().unwrap();
    assert!(!names.split(',').any(|n| n == "host"), "{names}");
}

/// An HTTP/2 connection to the proxy whose requests carry [`Frames`] bodies.
async fn streaming_http2(mesh: &Mesh) -> hyper::client::conn::http2::SendRequest<Frames> {
    let stream = TcpStream::connect(mesh.listener(PORT)).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// A request body of the frames given, data and trailers, with no length known ahead.
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn upgrades_other_than_websocket_are_refused() {
    let mesh = mesh().await;
    // h2c over an HTTP/1.1 upgrade is not in the listener's upgrade_configs: 403, as Envoy.
    let response = exchange(
        &mesh,
        b"GET / HTTP/1.1\r\nHost: api.m.local:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        "\r\n\r\n",
        1,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert_eq!(mesh.server("v1").hits(), 0);
}

#[tokio::test]
async fn grpc_timeout_is_forwarded_and_the_route_timeout_answers_deadline_exceeded() {
    let mesh = Mesh::start(Spec {
        protocol: "grpc",
        routes: vec![route_of_kind(
            "grpcRoute",
            "echo",
            None,
            serde_json::json!({"serviceName": "test.Echo"}),
            &[("v1", 1)],
            serde_json::json!({"timeout": {"perRequest": {"unit": "ms", "value": 300}}}),
        )],
        ..Spec::default()
    })
    .await;
    let client = Http2::connect(mesh.listener(PORT)).await;
    let call = |delay_ms: &'static str| {
        let request = http::Request::post(format!("http://{SERVICE}:{PORT}/test.Echo/Say"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "5S")
            .header("x-delay-ms", delay_ms)
            .body(http_body_util::Full::default())
            .unwrap();
        let mut client = client.clone();
        async move { timed(client.send(request)).await }
    };
    // The caller's deadline travels to the endpoint unchanged (it enforces it), with TE.
    let (reply, _) = call("0").await;
    assert_eq!(reply.header("grpc-status"), "0", "{reply:?}");
    let names = reply.header("x-echo-header-names");
    assert!(names.split(',').any(|n| n == "grpc-timeout"), "{names}");
    assert_eq!(reply.header("x-echo-te"), "trailers");
    // The route's own timeout still applies, answered as DEADLINE_EXCEEDED (4), trailers-only.
    let (reply, took) = call("2000").await;
    assert_eq!(
        (reply.status, reply.header("grpc-status")),
        (200, "4"),
        "{reply:?}"
    );
    assert!(
        took >= std::time::Duration::from_millis(280) && took < std::time::Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_endpoints_reset_reaches_the_client_as_a_reset_not_a_clean_end() {
    let mesh = Mesh::start(Spec::http2_to_v1()).await;
    let mut client = Http2::connect(mesh.listener(PORT)).await;
    let request = mesh
        .get("/reset")
        .uri(format!("http://{SERVICE}:{PORT}/reset"))
        .header("x-body-reset", "1")
        .body(http_body_util::Full::default())
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // The part that was sent arrives... and then the stream fails, as it did upstream; the
    // client must not take a truncated body for a whole one.
    assert!(reply.body_error.is_some(), "{reply:?}");
    // The connection itself is fine: another stream on it works.
    let request = mesh
        .get("/after")
        .uri(format!("http://{SERVICE}:{PORT}/after"))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.send(request).await.status, 200);
}

#[tokio::test]
async fn a_large_streamed_body_passes_under_http2_flow_control() {
    let mesh = Mesh::start(Spec::http2_to_v1()).await;
    let mut sender = streaming_http2(&mesh).await;
    // 16 MiB in 64 KiB frames: far beyond HTTP/2's initial 64 KiB window on both hops, so
    // it only passes if each hop's window updates flow.
    let frames = Frames(
        (0..256u32)
            .map(|i| Frame::data(Bytes::from(vec![(i % 251) as u8; 64 * 1024])))
            .collect(),
    );
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{SERVICE}:{PORT}/big"))
        .body(frames)
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-body-length"],
        (16u32 << 20).to_string()
    );
}

/// The last response of a connection (`Connection: close`) arrives with its FIN: once the
/// client has read the whole response, the FIN is there too, so the client's close is the
/// second one and leaves no TIME_WAIT toward the proxy. Under connection churn those
/// TIME_WAIT ends used up a pod's ports toward the one proxy address (a new connection per
/// request fell from ~7 000 to ~430 requests/s in `cargo xtask bench-l7`'s second round).
#[tokio::test]
async fn the_last_response_of_a_connection_comes_with_its_fin() {
    let mesh = mesh().await;
    let proxy = mesh.listener(PORT);
    for attempt in 0..100 {
        // A client as an application is: blocking reads on a thread of its own.
        let (response, fin_there) = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(proxy).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: api.m.local:8080\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !whole_response(&seen) {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "closed before the whole response: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            stream.set_nonblocking(true).unwrap();
            let fin_there = matches!(stream.peek(&mut buf), Ok(0));
            (String::from_utf8_lossy(&seen).into_owned(), fin_there)
        })
        .await
        .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "attempt {attempt} to {proxy}: {response}"
        );
        assert!(
            fin_there,
            "attempt {attempt}: the response came without its FIN"
        );
    }
}

/// Whether `seen` holds a whole response head and its `content-length` body.
fn whole_response(seen: &[u8]) -> bool {
    let text = String::from_utf8_lossy(seen);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length: usize = header_of(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    body.len() >= length
}
