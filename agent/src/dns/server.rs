//! The DNS server's sockets: UDP and TCP on one address, taking only queries the capture
//! brought (anything else is REFUSED: the server is no open resolver), each query on a task of
//! its own so a slow resolver holds up no other pod. Limits: UDP queries up to
//! [`MAX_UDP_QUERY`] bytes; `dns.max_tcp_connections` TCP connections (a pod at most
//! `dns.max_tcp_connections_per_pod` of them), each closed after
//! [`TCP_IDLE`] without a query; forwards bounded as [`super::forward`] says.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use hickory_proto::op::ResponseCode;
use tokio::net::{TcpStream, UdpSocket};
use tracing::warn;

use super::{
    answer::error_answer,
    forward::{read_framed, write_framed},
    handler::{Handler, Transport},
    limits::Slots,
    metrics::FailureReason,
};
use crate::{
    listen::Acceptor,
    redirect::orig_dst::{OrigDstSource, Redirected},
};

/// The largest UDP query taken: far above any real one (a name is at most 255 bytes; EDNS
/// options add little), so a datagram above it is not a query.
pub const MAX_UDP_QUERY: usize = 4096;
/// A TCP connection with no query for this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Serves UDP queries on `socket` until the runtime ends; `origins` says where each captured
/// query was going.
pub async fn serve_udp(socket: UdpSocket, origins: Arc<dyn OrigDstSource>, handler: Arc<Handler>) {
    let socket = Arc::new(socket);
    // One byte over the limit tells an oversized datagram from one of exactly the limit.
    let mut buffer = vec![0u8; MAX_UDP_QUERY + 1];
    loop {
        let (len, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier replies surface here; the socket stays usable.
                warn!(%error, "DNS server: UDP receive failed");
                continue;
            }
        };
        let SocketAddr::V4(client) = client else {
            continue;
        };
        let raw = buffer[..len].to_vec();
        if len > MAX_UDP_QUERY {
            handler.metrics.failed(
                FailureReason::malformed,
                None,
                client,
                &format_args!("UDP query above {MAX_UDP_QUERY} bytes dropped"),
            );
            continue;
        }
        let Some(origin) = captured(origins.as_ref(), client, &handler) else {
            if let Some(refused) = error_answer(None, &raw, ResponseCode::Refused) {
                let _ = socket.send_to(&refused, client).await;
            }
            continue;
        };
        let socket = Arc::clone(&socket);
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            if let Some(answer) = handler.answer(&raw, client, origin, Transport::Udp).await {
                let _ = socket.send_to(&answer, client).await;
            }
        });
    }
}

/// Serves TCP connections on `listener` (at most as many at once as `slots` allow, node-wide
/// and per pod) until the runtime ends.
pub async fn serve_tcp(
    mut acceptor: Acceptor,
    origins: Arc<dyn OrigDstSource>,
    handler: Arc<Handler>,
    slots: Slots,
) {
    loop {
        let (stream, client) = acceptor.accept().await;
        let SocketAddr::V4(client) = client else {
            continue;
        };
        let Some(origin) = captured(origins.as_ref(), client, &handler) else {
            continue;
        };
        let Some(slot) = slots.take(origin.workload_id) else {
            handler.metrics.failed(
                FailureReason::overloaded,
                None,
                client,
                &"TCP connection closed: dns.max_tcp_connections (or the pod's share) reached",
            );
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            connection(stream, client, origin, &handler).await;
            drop(slot);
        });
    }
}

/// Queries one after the other on one connection (RFC 7766 allows pipelining, answered in
/// order here), until the client closes, idles or breaks the framing.
async fn connection(
    mut stream: TcpStream,
    client: SocketAddrV4,
    origin: Redirected,
    handler: &Handler,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(query)) => query,
            // EOF between queries is the normal end; idling out too.
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(_) => return,
            Ok(Err(error)) => {
                handler
                    .metrics
                    .failed(FailureReason::malformed, None, client, &error);
                return;
            }
        };
        let Some(answer) = handler.answer(&query, client, origin, Transport::Tcp).await else {
            return;
        };
        let written = tokio::time::timeout(TCP_IDLE, write_framed(&mut stream, &answer)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

/// Where the capture says `client`'s query was going; `None` (counted and logged) when it
/// did not come through the capture.
fn captured(
    origins: &dyn OrigDstSource,
    client: SocketAddrV4,
    handler: &Handler,
) -> Option<Redirected> {
    match origins.original_destination(client) {
        Ok(Some(origin)) => Some(origin),
        Ok(None) => {
            handler.metrics.failed(
                FailureReason::not_captured,
                None,
                client,
                &"no capture record: sent straight to the DNS server, or from outside the mesh",
            );
            None
        }
        Err(error) => {
            handler
                .metrics
                .failed(FailureReason::not_captured, None, client, &error);
            None
        }
    }
}
