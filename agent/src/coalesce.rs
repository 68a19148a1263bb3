//! An HTTP/2 connection's writes held to the end of the runtime's turn, so the frames of all
//! the streams that are ready go out in one system call.
//!
//! Each stream of an HTTP/2 connection is served by its own task, which hands its frames to
//! the connection's task and wakes it. tokio runs a task woken by the running one next (its
//! LIFO slot), so the connection wrote each stream's response as soon as that stream was done:
//! one `writev` per response, while the other streams' tasks, already runnable, waited behind
//! it (0.6 `writev` per request through the proxy, 19 % of its CPU). The first write of a
//! turn is instead put off once: the connection's task yields to the back of the run queue,
//! the waiting streams queue their frames, and the next try writes them all. The turn ends
//! with the flush. An idle runtime runs the yielded task at once, so a lone request waits
//! no longer than a trip through the scheduler. HTTP/1.1 carries one response at a time per
//! connection: nothing to gather, so it is written at once.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4); HTTP/1.1 has no `PRI` method.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether writes are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Coalesce,
    Direct,
    /// A server's connection before the client's first bytes: the preface decides. Holds how
    /// much of it has been seen.
    UntilPreface(usize),
}

/// `inner` with the first write of each turn put off once (module docs).
pub struct CoalescedWrites<T> {
    inner: T,
    mode: Mode,
    /// This turn's first write was put off; the next goes through.
    deferred: bool,
}

impl<T> CoalescedWrites<T> {
    /// Coalesced when `http2`: a client connection knows what it speaks.
    pub fn new(inner: T, http2: bool) -> Self {
        let mode = if http2 { Mode::Coalesce } else { Mode::Direct };
        Self {
            inner,
            mode,
            deferred: false,
        }
    }

    /// A server's connection: coalesced if the client opens with the HTTP/2 preface.
    pub fn when_client_speaks_http2(inner: T) -> Self {
        Self {
            inner,
            mode: Mode::UntilPreface(0),
            deferred: false,
        }
    }

    /// The stream's first bytes, `read`, tell whether it speaks HTTP/2.
    fn saw(&mut self, read: &[u8]) {
        let Mode::UntilPreface(seen) = self.mode else {
            return;
        };
        let expected = &HTTP2_PREFACE[seen..];
        let n = read.len().min(expected.len());
        self.mode = if read[..n] != expected[..n] {
            Mode::Direct
        } else if seen + n == HTTP2_PREFACE.len() {
            Mode::Coalesce
        } else {
            Mode::UntilPreface(seen + n)
        };
    }

    /// Puts the turn's first write off: wakes the task so that it runs again after the
    /// tasks already waiting.
    fn put_off(&mut self, cx: &mut Context<'_>) -> bool {
        if self.mode != Mode::Coalesce || self.deferred {
            return false;
        }
        self.deferred = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Mode::UntilPreface(_) = this.mode {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                this.saw(filled);
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.put_off(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.put_off(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// The turn's writes end with a flush: the next write starts another turn.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.deferred = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for CoalescedWrites<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls one write of `bytes`; the wakes it asked for.
    fn poll_write_once<T: AsyncWrite + Unpin>(
        io: &mut CoalescedWrites<T>,
        bytes: &[u8],
    ) -> (Poll<io::Result<usize>>, usize) {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let polled = Pin::new(io).poll_write(&mut cx, bytes);
        (polled, wakes.0.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn an_http2_turn_puts_its_first_write_off_once_and_the_flush_ends_it() {
        let (ours, mut peer) = duplex(1024);
        let mut io = CoalescedWrites::new(ours, true);
        let (first, wakes) = poll_write_once(&mut io, b"a");
        assert!(first.is_pending() && wakes == 1, "{first:?}, {wakes} wakes");
        assert!(matches!(
            poll_write_once(&mut io, b"a").0,
            Poll::Ready(Ok(1))
        ));
        assert!(matches!(
            poll_write_once(&mut io, b"b").0,
            Poll::Ready(Ok(1))
        ));
        io.flush().await.unwrap();
        assert!(poll_write_once(&mut io, b"c").0.is_pending());
        io.write_all(b"c").await.unwrap();
        let mut got = [0; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }

    #[tokio::test]
    async fn http1_writes_go_at_once() {
        let (ours, _peer) = duplex(1024);
        let mut io = CoalescedWrites::new(ours, false);
        assert!(matches!(
            poll_write_once(&mut io, b"a"),
            (Poll::Ready(Ok(1)), 0)
        ));
    }

    /// The preface, however the reads split it, makes a server's connection coalesce; any
    /// other first bytes do not.
    #[tokio::test]
    async fn a_server_connection_coalesces_once_the_client_sent_the_http2_preface() {
        for (sent, splits, coalesces) in [
            (HTTP2_PREFACE, vec![24], true),
            (HTTP2_PREFACE, vec![1, 3, 20], true),
            (
                &b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                vec![1, 27],
                false,
            ),
            (&b"PRI / HTTP/1.1\r\n\r\n"[..], vec![18], false),
        ] {
            let (ours, mut peer) = duplex(1024);
            let mut io = CoalescedWrites::when_client_speaks_http2(ours);
            let mut at = 0;
            for split in splits {
                peer.write_all(&sent[at..at + split]).await.unwrap();
                let mut got = vec![0; split];
                io.read_exact(&mut got).await.unwrap();
                at += split;
            }
            let (write, _) = poll_write_once(&mut io, b"x");
            assert_eq!(
                write.is_pending(),
                coalesces,
                "{:?}",
                String::from_utf8_lossy(sent)
            );
        }
    }
}
