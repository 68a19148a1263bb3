//! The filter chains of a listener port that may take TLS (a virtual node's inbound port, a
//! gateway's port): the chain a connection goes to — TLS only (STRICT), plain text only
//! (DISABLED), or by its first bytes (PERMISSIVE) — and TLS terminated for it.
use std::{net::SocketAddr, time::Duration};

use mesh_xds::plan::{InboundPort, PortPlan, TlsChain};
use tokio::net::TcpStream;
use tracing::debug;

use super::{ProxyInputs, tcp::reset};
use crate::{
    telemetry::metrics::FailureReason,
    tls::{Alpn, stream::MaybeTls},
};

/// PERMISSIVE ports: how long a client may stay silent before it is taken for plain text.
const PERMISSIVE_DETECT: Duration = Duration::from_secs(5);

/// Which chain of a listener port takes a connection.
enum Chain<'a> {
    Plain(&'a PortPlan),
    Tls(&'a TlsChain),
}

/// The connection through its chain: the client's stream (TLS terminated when the chain
/// has TLS) and the chain's plan; None when it was refused (and counted).
pub async fn accept<'a>(
    stream: TcpStream,
    peer: SocketAddr,
    port: &'a InboundPort,
    inputs: &ProxyInputs,
) -> Option<(MaybeTls, &'a PortPlan)> {
    let chain = match (&port.tls, &port.plain) {
        (Some(tls), Some(plain)) => match speaks_tls(&stream).await {
            true => Chain::Tls(tls),
            false => Chain::Plain(plain),
        },
        (Some(tls), None) => Chain::Tls(tls),
        (None, Some(plain)) => Chain::Plain(plain),
        (None, None) => {
            reset(stream);
            return None;
        }
    };
    match chain {
        Chain::Plain(plan) => Some((MaybeTls::Plain(stream), plan)),
        Chain::Tls(chain) => {
            let alpn = match chain.plan {
                PortPlan::Http(_) => Alpn::Http,
                PortPlan::Tcp { .. } => Alpn::None,
            };
            let local = stream.local_addr().ok();
            match inputs.tls.accept(&chain.tls, alpn, stream, peer).await {
                Ok(tls) => Some((MaybeTls::Server(Box::new(tls)), &chain.plan)),
                Err(failed) => {
                    // Counted and said (once per kind) by the store; the client is gone.
                    debug!(?local, %failed, "TLS refused");
                    let local = local.map_or_else(String::new, |l| l.to_string());
                    inputs.metrics.failed(&local, FailureReason::tls);
                    None
                }
            }
        }
    }
}

/// PERMISSIVE: whether the client opens with a TLS handshake record (content type 22). A
/// client that says nothing for a while is taken for plain text (protocols where the server
/// speaks first).
async fn speaks_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(PERMISSIVE_DETECT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}
