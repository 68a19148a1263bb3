//! A proxied connection's socket, with or without TLS on it: what the engines (HTTP, the TCP
//! relay) read and write, whichever side terminated or originated TLS.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{client, server};

use super::identity::{peer_identity, subject_alt_names};

pub enum MaybeTls {
    Plain(TcpStream),
    /// TLS this proxy originated (toward an endpoint).
    Client(Box<client::TlsStream<TcpStream>>),
    /// TLS this proxy terminated (from a client).
    Server(Box<server::TlsStream<TcpStream>>),
}

impl From<TcpStream> for MaybeTls {
    fn from(tcp: TcpStream) -> Self {
        Self::Plain(tcp)
    }
}

impl MaybeTls {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Client(tls) => tls.get_ref().0,
            Self::Server(tls) => tls.get_ref().0,
        }
    }

    /// The peer as its certificate names it (see [`super::identity`]); None without TLS or
    /// without a client certificate.
    pub fn peer_identity(&self) -> Option<String> {
        let certificates = match self {
            Self::Plain(_) => return None,
            Self::Client(tls) => tls.get_ref().1.peer_certificates(),
            Self::Server(tls) => tls.get_ref().1.peer_certificates(),
        };
        peer_identity(&subject_alt_names(certificates?.first()?))
    }

    fn negotiated_h2(&self) -> bool {
        let protocol = match self {
            Self::Plain(_) => None,
            Self::Client(tls) => tls.get_ref().1.alpn_protocol(),
            Self::Server(tls) => tls.get_ref().1.alpn_protocol(),
        };
        protocol == Some(b"h2")
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Client(s) => s.is_write_vectored(),
            Self::Server(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// hyper's pool: a connection that negotiated h2 by ALPN is shared by requests.
impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}
