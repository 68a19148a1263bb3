//! Forwarding a query to the pod's own resolver, byte for byte, over the transport the pod
//! used: UDP (a fresh socket and port per query, the answer taken only from the resolver and
//! with the query's id; a truncated answer goes back truncated, and the pod retries over TCP,
//! which is captured too) or TCP. Every forward is bounded in time, and in number — node-wide
//! and per pod — so no pod can hold the server's resources.
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use super::limits::{Slot, Slots};

/// The largest DNS message (TCP's two-byte length; UDP's datagram limit is above it).
pub const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no answer from {resolver} within {timeout:?}")]
    Timeout {
        resolver: SocketAddrV4,
        timeout: Duration,
    },
    #[error("{resolver}: {source}")]
    Io {
        resolver: SocketAddrV4,
        source: io::Error,
    },
}

pub struct Forwarder {
    timeout: Duration,
    in_flight: Slots,
}

impl Forwarder {
    pub fn new(timeout: Duration, max_in_flight: usize, max_per_pod: usize) -> Self {
        Self {
            timeout,
            in_flight: Slots::new(max_in_flight, max_per_pod),
        }
    }

    /// A place for one more forward of `workload_id`, or `None` when it or the node is at
    /// its limit.
    pub fn permit(&self, workload_id: u32) -> Option<Slot> {
        self.in_flight.take(workload_id)
    }

    pub async fn udp(&self, resolver: SocketAddrV4, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let exchange = async {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await?;
            // Connected: the kernel drops datagrams from anyone but the resolver.
            socket.connect(resolver).await?;
            socket.send(query).await?;
            let mut buffer = vec![0u8; MAX_MESSAGE];
            loop {
                let len = socket.recv(&mut buffer).await?;
                // A stray or late answer to another query is not this one's.
                if len >= 2 && buffer[..2] == query[..2] {
                    buffer.truncate(len);
                    return Ok(buffer);
                }
            }
        };
        self.bounded(resolver, exchange).await
    }

    pub async fn tcp(&self, resolver: SocketAddrV4, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let exchange = async {
            let mut stream = TcpStream::connect(resolver).await?;
            stream.set_nodelay(true)?;
            write_framed(&mut stream, query).await?;
            read_framed(&mut stream).await
        };
        self.bounded(resolver, exchange).await
    }

    async fn bounded(
        &self,
        resolver: SocketAddrV4,
        exchange: impl Future<Output = io::Result<Vec<u8>>>,
    ) -> Result<Vec<u8>, ForwardError> {
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(ForwardError::Io { resolver, source }),
            Err(_) => Err(ForwardError::Timeout {
                resolver,
                timeout: self.timeout,
            }),
        }
    }
}

/// A DNS message over TCP: its length in two bytes, then the message (RFC 1035 §4.2.2).
pub async fn read_framed(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let len = usize::from(stream.read_u16().await?);
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

pub async fn write_framed(
    stream: &mut (impl AsyncWriteExt + Unpin),
    message: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[tokio::test]
    async fn udp_takes_only_the_answer_with_the_query_id_in_time() {
        let resolver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = resolver.local_addr().unwrap() else {
            panic!("IPv4");
        };
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            let (len, from) = resolver.recv_from(&mut buffer).await.unwrap();
            resolver.send_to(b"\x00\x00stale", from).await.unwrap();
            let mut answer = buffer[..len].to_vec();
            answer.extend_from_slice(b"-answer");
            resolver.send_to(&answer, from).await.unwrap();
        });
        let forwarder = Forwarder::new(Duration::from_secs(2), 10, 10);
        let answer = forwarder.udp(addr, b"\x12\x34query").await.unwrap();
        assert_eq!(answer, b"\x12\x34query-answer");

        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(silent_addr) = silent.local_addr().unwrap() else {
            panic!("IPv4");
        };
        let quick = Forwarder::new(Duration::from_millis(100), 10, 10);
        let error = quick.udp(silent_addr, b"\x00\x01q").await.unwrap_err();
        assert!(matches!(error, ForwardError::Timeout { .. }), "{error}");
    }
}
