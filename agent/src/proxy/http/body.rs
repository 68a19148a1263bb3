//! Body wrappers of the forwarding path: a request body kept for retries (replayed, or
//! streamed past the buffer limit), and a response body held to the route's timeouts.
use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};

use super::exchange::CountedBody;
use crate::dataplane::upstream::{Body, BoxError};

/// Request bodies up to this size are kept so a retry can send them again; a longer body is
/// streamed and its request is not retried.
const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// A request body as retries need it.
pub enum RequestBody {
    /// Read whole; sent again on each try.
    Buffered(Bytes, Option<HeaderMap>),
    /// Sent once (too long to keep, or no retry policy).
    Streaming(Option<CountedBody>),
    /// Longer than the buffer: what was read, then the rest; sent once.
    Prefixed(Option<(VecDeque<Bytes>, CountedBody)>),
}

impl RequestBody {
    pub async fn buffer(mut body: CountedBody) -> Result<Self, hyper::Error> {
        let mut chunks = VecDeque::new();
        let mut size = 0;
        while let Some(frame) = body.frame().await {
            match frame?.into_data() {
                Ok(data) => {
                    size += data.len();
                    chunks.push_back(data);
                    if size > RETRY_BUFFER_LIMIT {
                        return Ok(Self::Prefixed(Some((chunks, body))));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    return Ok(Self::Buffered(concat(chunks, size), trailers));
                }
            }
        }
        Ok(Self::Buffered(concat(chunks, size), None))
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(..))
    }

    /// The body for the next try (for streaming bodies: the first and only one).
    pub fn take(&mut self) -> Body {
        match self {
            Self::Buffered(data, None) => full(data.clone()),
            Self::Buffered(data, Some(trailers)) => Replay {
                data: Some(data.clone()),
                trailers: Some(trailers.clone()),
            }
            .boxed_unsync(),
            Self::Streaming(body) => match body.take() {
                Some(body) => body.map_err(BoxError::from).boxed_unsync(),
                None => full(Bytes::new()),
            },
            Self::Prefixed(parts) => match parts.take() {
                Some((prefix, rest)) => Prefixed { prefix, rest }.boxed_unsync(),
                None => full(Bytes::new()),
            },
        }
    }
}

fn concat(chunks: VecDeque<Bytes>, size: usize) -> Bytes {
    if chunks.len() == 1 {
        return chunks.into_iter().next().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(size);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.into()
}

/// A response body held to what is left of the route timeout and to the route's idle
/// timeout: a body that stalls past either ends in an error, so the client sees the stream
/// (HTTP/2) or connection (HTTP/1.1) reset instead of waiting, as Envoy does.
pub struct TimedBody {
    inner: Body,
    deadline: Option<tokio::time::Instant>,
    idle: Option<Duration>,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    pub fn wrap(inner: Body, deadline: Option<Instant>, idle: Option<Duration>) -> Body {
        if deadline.is_none() && idle.is_none() {
            return inner;
        }
        let mut body = Self {
            inner,
            deadline: deadline.map(tokio::time::Instant::from_std),
            idle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        body.rearm();
        body.boxed_unsync()
    }

    fn rearm(&mut self) {
        let idle = self.idle.map(|idle| tokio::time::Instant::now() + idle);
        let next = match (self.deadline, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(next) = next {
            self.timer.as_mut().reset(next);
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.rearm();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(done) => return Poll::Ready(done),
            Poll::Pending => {}
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(
                "upstream response timed out (route timeout or idle timeout)".into(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A kept body with trailers (gRPC requests may carry them), sent again.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// What was read while deciding whether to keep the body, then the rest of it.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: CountedBody,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: usize = self.prefix.iter().map(Bytes::len).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + prefix as u64);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + prefix as u64);
        }
        hint
    }
}

/// A whole body, as the proxy's own replies and emptied retries send.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
