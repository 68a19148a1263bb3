//! HTTP/1.1 connections that sit idle between requests give hyper's buffers back.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB buffer for response heads for as long as a
//! connection lives, idle or not: ten thousand keep-alive connections that pods leave open
//! held over 200 MB of the node proxy. Once a connection has been idle for
//! [`IDLE_BEFORE_PARKING`] — no request in flight, everything written, nothing to read —
//! hyper's part of it is ended: its next read sees an end of stream the socket never had,
//! and the shutdown hyper then asks for is not passed on. The socket is *parked*: it waits
//! for readability alone, holding no buffer, and its next request starts a new hyper
//! connection. The client sees one keep-alive connection throughout.
//!
//! Only HTTP/1.1 parks: an HTTP/2 connection's state (streams, flow control, HPACK tables)
//! cannot be rebuilt, and an upgraded connection (101) belongs to its tunnel. A client that
//! stops that long in the middle of its next request's head has the connection closed (the
//! part it sent is lost with hyper's buffer), as a defence against slow headers would.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

use crate::{dataplane::upstream::Body, tls::stream::MaybeTls};

/// How long an HTTP/1.1 connection waits for its next request before it is parked. Short
/// enough that idle connections cost little; long enough that a busy connection is never
/// rebuilt (parking every gap between requests would allocate hyper's buffers anew each
/// time). A connection is parked between one and two of these after its last read or write.
pub const IDLE_BEFORE_PARKING: Duration = Duration::from_secs(1);

/// What the connection's requests, its I/O and the serving loop share.
#[derive(Default)]
pub struct Parking {
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// An HTTP/1.x request came: the connection may park.
    http1: AtomicBool,
    /// An upgrade (101) or HTTP/2 came: never.
    never: AtomicBool,
    /// The socket, while parked.
    parked: Mutex<Option<MaybeTls>>,
}

impl Parking {
    /// A request starts: the connection is busy until the guard (carried by the response
    /// body) is dropped.
    pub fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        match version {
            Version::HTTP_10 | Version::HTTP_11 => self.http1.store(true, Ordering::Relaxed),
            _ => self.never.store(true, Ordering::Relaxed),
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    fn may_ever_park(&self) -> bool {
        self.http1.load(Ordering::Relaxed) && !self.never.load(Ordering::Relaxed)
    }

    /// No request in flight.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// The socket, if the connection was parked (not ended).
    pub fn take_parked(&self) -> Option<MaybeTls> {
        self.parked.lock().ok()?.take()
    }

    fn park(&self, io: MaybeTls) {
        if let Ok(mut parked) = self.parked.lock() {
            *parked = Some(io);
        }
        // Poisoned (a panic elsewhere): the socket is dropped and the connection ends.
    }
}

/// Counts a connection in `mesh_http_connections_parked` while it stays parked (its task
/// dropped included).
pub struct ParkedGauge(Gauge);

impl ParkedGauge {
    pub fn count(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ParkedGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request of the connection in flight; dropped with its response's body.
pub struct InFlight(Arc<Parking>);

impl InFlight {
    /// The response, carrying the guard until hyper has taken all of its body. A 101 hands
    /// the connection to a tunnel, which never parks.
    pub fn carried_by(self, response: Response<Body>) -> Response<TrackedBody> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.0.never.store(true, Ordering::Relaxed);
        }
        response.map(|body| TrackedBody { body, _busy: self })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A response body whose request counts as in flight until hyper drops it.
pub struct TrackedBody {
    body: Body,
    _busy: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket as hyper sees it: the same bytes, plus the made-up end of stream
/// that parks an idle connection.
pub struct ParkableIo {
    /// None once parked (hyper only shuts down after that).
    io: Option<MaybeTls>,
    parking: Arc<Parking>,
    /// Everything hyper wrote has been flushed (hyper flushes only with its buffer empty):
    /// a parked connection must not leave part of a response in hyper's buffer.
    flushed: bool,
    /// Reads that returned data and writes, and their count when the idle timer was last
    /// set: a timer that fires after more is set again rather than taken for idleness, so a
    /// busy connection costs no timer update per request.
    activity: u64,
    activity_when_set: u64,
    /// Set once the connection is first idle with nothing in flight.
    idle: Option<Pin<Box<Sleep>>>,
}

impl ParkableIo {
    pub fn new(io: MaybeTls, parking: Arc<Parking>) -> Self {
        Self {
            io: Some(io),
            parking,
            flushed: true,
            activity: 0,
            activity_when_set: 0,
            idle: None,
        }
    }

    /// Whether the connection, whose read would block, has now been idle long enough: the
    /// timer, once set, is polled on every blocked read, and when it fires after activity
    /// (or with a request in flight) it is set again instead.
    fn idle_long_enough(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.parking.may_ever_park() {
            return false;
        }
        if self.idle.is_none() {
            self.activity_when_set = self.activity;
        }
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_BEFORE_PARKING)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.activity_when_set == self.activity && self.flushed && self.parking.idle() {
                return true;
            }
            self.activity_when_set = self.activity;
            timer.as_mut().reset(Instant::now() + IDLE_BEFORE_PARKING);
        }
    }

    /// The socket for a write, which is activity and leaves something to flush; none once
    /// parked (hyper writes nothing after the end of stream it was given).
    fn writing(&mut self) -> io::Result<&mut MaybeTls> {
        let io = self.io.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        self.flushed = false;
        self.activity += 1;
        Ok(io)
    }
}

impl AsyncRead for ParkableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        match Pin::new(io).poll_read(cx, buf) {
            Poll::Pending if this.idle_long_enough(cx) => {
                if let Some(io) = this.io.take() {
                    this.parking.park(io);
                }
                // The end of stream hyper takes for the client closing between requests.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                if buf.filled().len() > before {
                    this.activity += 1;
                }
                ready
            }
        }
    }
}

impl AsyncWrite for ParkableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().writing() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().writing() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let flushed = Pin::new(io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.flushed = true;
        }
        flushed
    }

    /// A parked socket is not shut down: it stays open for the client's next request.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
