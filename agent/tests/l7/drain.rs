//! The drain (SIGTERM): connections are asked to end rather than cut — HTTP/2 with a GOAWAY
//! (RFC 9113 §6.8), HTTP/1.1 by `connection: close` on the response in flight — and requests
//! already running finish.
use std::time::Duration;

use http_body_util::Full;

use crate::harness::*;

#[tokio::test]
async fn http2_connections_get_a_goaway_and_streams_in_flight_finish() {
    let mesh = Mesh::start(Spec::http2_to_v1()).await;
    let mut client = Http2::connect(mesh.listener(PORT)).await;
    let slow = mesh
        .get("/slow")
        .uri(format!("http://{SERVICE}:{PORT}/slow"))
        .header("x-delay-ms", "400")
        .body(Full::default())
        .unwrap();
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { client.send(slow).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    mesh.proxy.drain();
    // The stream that was running when the drain began is answered...
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.served_by()), (200, "v1"), "{reply:?}");
    // ...and the connection takes no new streams: the GOAWAY closed it.
    let next = mesh
        .get("/after")
        .uri(format!("http://{SERVICE}:{PORT}/after"))
        .body(Full::default())
        .unwrap();
    let refused = tokio::time::timeout(TIMEOUT, async {
        match client.0.ready().await {
            Ok(()) => client.0.send_request(next).await.map(drop),
            Err(error) => Err(error),
        }
    })
    .await
    .expect("the closed connection answers at once");
    assert!(refused.is_err(), "a new stream after GOAWAY was accepted");
}

#[tokio::test]
async fn http1_connections_close_after_the_response_in_flight() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await;
    let mut client = Http1::connect(mesh.listener(PORT)).await;
    // Kept alive before the drain.
    let reply = client
        .send(mesh.get("/").body(Full::default()).unwrap())
        .await;
    assert_eq!(reply.status, 200);
    assert_ne!(reply.header("connection"), "close");
    let slow = mesh
        .get("/slow")
        .header("x-delay-ms", "300")
        .body(Full::default())
        .unwrap();
    let in_flight = tokio::spawn(async move { client.send(slow).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    mesh.proxy.drain();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("connection"), "close", "{reply:?}");
}
