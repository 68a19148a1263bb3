//! A connection's last response leaves with its FIN.
//!
//! When a client asks for the connection to end with this response (`Connection: close`,
//! HTTP/1.0), hyper writes the response and then shuts the socket down. Sent apart, the FIN
//! comes a moment after the response: a client that reads the response and closes at once
//! closes first, and keeps its end in TIME_WAIT. Every redirected connection of a pod goes to
//! the one proxy address, so under connection churn those ends used up the pod's ports toward
//! it (a new connection per request fell from ~7 000 to ~430 requests/s by the second round of
//! `cargo xtask bench-l7`). Corking the socket as the last frame goes out holds that frame
//! until the shutdown, which sends it with the FIN in one segment; the client's close is then
//! the second one, as with a server that closes after its response. The relay does the same
//! for L4 (relay.rs).
use std::os::fd::{BorrowedFd, RawFd};

use http::{Request, Version, header::CONNECTION};
use socket2::SockRef;
use tracing::debug;

/// Whether the connection ends with this request's response (HTTP/1.1 `Connection: close`,
/// or HTTP/1.0 without keep-alive).
pub fn is_last_request<B>(request: &Request<B>) -> bool {
    let has_token = |token: &str| {
        request
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    match request.version() {
        Version::HTTP_11 => has_token("close"),
        Version::HTTP_10 => !has_token("keep-alive"),
        _ => false,
    }
}

/// Put on a connection's last request (in its extensions): the client's socket, which the
/// exchange corks as the response's last frame goes out (exchange.rs).
#[derive(Clone, Copy, Debug)]
pub struct CorkAtEnd(pub RawFd);

impl CorkAtEnd {
    pub fn cork(self) {
        cork(self.0);
    }
}

fn cork(socket: RawFd) {
    // SAFETY: the connection that owns the socket is alive while it serves the request and
    // polls its response body, the only times this runs (never from a drop, when the
    // connection may have closed the socket already).
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    if let Err(error) = SockRef::from(&socket).set_tcp_cork(true) {
        debug!(%error, "cannot cork the last response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, connection: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().version(version);
        if let Some(value) = connection {
            builder = builder.header(CONNECTION, value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_last_request_is_the_one_that_asks_to_close() {
        assert!(is_last_request(&request(Version::HTTP_11, Some("close"))));
        assert!(is_last_request(&request(
            Version::HTTP_11,
            Some("x-a, Close")
        )));
        assert!(!is_last_request(&request(Version::HTTP_11, None)));
        assert!(!is_last_request(&request(
            Version::HTTP_11,
            Some("keep-alive")
        )));
        assert!(is_last_request(&request(Version::HTTP_10, None)));
        assert!(!is_last_request(&request(
            Version::HTTP_10,
            Some("Keep-Alive")
        )));
        assert!(!is_last_request(&request(Version::HTTP_2, Some("close"))));
    }
}
