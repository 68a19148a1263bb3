//! The egress filter: on a DROP_ALL mesh a destination that is not a backend of the source's
//! virtual node is reset and counted; ALLOW_ALL relays it to where the application connected.
use std::{io, net::SocketAddrV4};

use http_body_util::Full;
use tokio::{io::AsyncReadExt, net::TcpStream};

use crate::harness::*;

/// A server outside the mesh, and a proxy listener for connections redirected to it.
async fn outside(mesh: &Mesh) -> (Server, std::net::SocketAddr) {
    let server = Server::start(ServerSpec::named("outside"), unique_ip()).await;
    let std::net::SocketAddr::V4(destination) = server.addr else {
        unreachable!()
    };
    let listener = mesh
        .proxy
        .listen_for(SocketAddrV4::new(*destination.ip(), destination.port()));
    (server, listener)
}

#[tokio::test]
async fn drop_all_resets_undeclared_destinations() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await;
    let (server, listener) = outside(&mesh).await;
    let outcome = match TcpStream::connect(listener).await {
        Ok(mut client) => client.read(&mut [0u8; 16]).await.map(drop),
        Err(error) => Err(error),
    };
    assert_eq!(
        outcome.expect_err("DROP_ALL let it through").kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(server.hits(), 0);
    assert_eq!(
        mesh.proxy.metric(&format!(
            "mesh_denied_connections_total{{source_virtual_node=\"m/client\",port=\"{}\"}}",
            server.addr.port()
        )),
        1.0
    );
    // The declared backend still works.
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
}

#[tokio::test]
async fn allow_all_relays_undeclared_destinations() {
    let mesh = Mesh::start(Spec {
        egress: "ALLOW_ALL",
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await;
    let (server, listener) = outside(&mesh).await;
    let reply = send_http1(
        listener,
        request_to("outside.example", 80, "GET", "/")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!((reply.status, reply.served_by()), (200, "outside"));
    assert_eq!(server.hits(), 1);
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
}
