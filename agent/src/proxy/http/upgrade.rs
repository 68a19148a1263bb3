//! HTTP/1.1 upgrades (WebSocket) through the proxy, as Envoy passes them when the listener's
//! `upgrade_configs` allow: the request goes to one endpoint with its `Upgrade` and
//! `Connection: upgrade` headers (RFC 9110 §7.8), and once the endpoint answers 101 the two
//! connections are joined byte for byte until either side closes or the proxy drains.
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, Version, header};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    body::full,
    headers::{Message, strip_hop_by_hop},
};
use crate::dataplane::upstream::{Body, InFlight};

/// The protocol an HTTP/1.1 request asks to switch to: `Connection` lists `upgrade` and
/// `Upgrade` names the protocol. (HTTP/2 has no Upgrade; its extended CONNECT is not served.)
pub fn requested(parts: &http::request::Parts) -> Option<&HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let listed = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    listed.then(|| parts.headers.get(header::UPGRADE)).flatten()
}

/// Puts the upgrade back on a forwarded request or a 101 response: the hop-by-hop rules take
/// it off everything else.
pub fn keep(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());
}

/// The 101 the client gets for the endpoint's, and the two connections joined behind it. The
/// endpoint's request slot (`held`) lasts as long as the joined connection.
pub fn switch(
    mut response: Response<Incoming>,
    held: InFlight,
    client: OnUpgrade,
    protocol: &HeaderValue,
    cut: CancellationToken,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(join(client, upstream, held, cut));
    let (mut parts, _) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, Message::Response);
    keep(&mut parts.headers, protocol);
    Response::from_parts(parts, full(Bytes::new()))
}

async fn join(client: OnUpgrade, upstream: OnUpgrade, held: InFlight, cut: CancellationToken) {
    let _held = held;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "the upgrade did not complete on one side");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match result {
            Ok((sent, received)) => debug!(sent, received, "upgraded connection closed"),
            Err(error) => debug!(%error, "upgraded connection ended with an error"),
        },
        () = cut.cancelled() => debug!("upgraded connection cut at the end of the drain"),
    }
}
