//! Listening sockets every server of the agent shares: binding with errors that name the
//! setting, and accepting without spinning when accept fails.
//!
//! accept(2) fails for reasons that last — out of descriptors (EMFILE/ENFILE), out of memory
//! — and retrying at once fails again at once: a loop that only logs burns a core and writes
//! gigabytes of log in seconds. [`Acceptor`] backs off (doubling from 5 ms to 1 s), counts
//! every failure in `mesh_agent_accept_errors_total{listener}` and logs at most one line a
//! second per listener, saying how many it did not log. The kernel keeps the accept queue
//! meanwhile; once descriptors are free again, accepting resumes at full speed.
use std::{
    io,
    net::SocketAddr,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream, unix};
use tracing::warn;

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{what} {addr} is already in use by another process")]
    InUse {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("{what} {addr} is not an address of this node")]
    NotLocal {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen on {what} {addr}: {source}")]
    Other {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// Binds a listener, turning the common failures into errors that name the setting.
/// SO_REUSEPORT lets the next agent listen beside this one during an upgrade (the kernel
/// spreads new connections over both until this one closes); a port held by anything that
/// did not set it is still "in use".
pub fn bind_listener(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse { what, addr },
        io::ErrorKind::AddrNotAvailable => ListenError::NotLocal { what, addr },
        _ => ListenError::Other { what, addr, source },
    })
}

/// Where the kernel knows it: connections waiting in the accept queue of a listener that
/// closes move to another listener of its SO_REUSEPORT group (net.ipv4.tcp_migrate_req,
/// Linux 5.14+) instead of being reset — an old agent's last ones go to its successor. The
/// setting is per network namespace and only acts on SO_REUSEPORT groups.
pub fn migrate_requests_on_close() {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    if let Err(error) = std::fs::write(SYSCTL, "1") {
        warn!(%error, sysctl = SYSCTL, "connections queued on a closing listener will be reset, not moved to the next agent");
    }
}

/// A listening socket of either family the agent serves on.
pub trait Listen {
    type Stream;
    type Peer;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Peer)>>;
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::poll_accept(self, cx)
    }
}

impl Listen for UnixListener {
    type Stream = UnixStream;
    type Peer = unix::SocketAddr;
    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(UnixStream, unix::SocketAddr)>> {
        UnixListener::poll_accept(self, cx)
    }
}

/// A listener's accept loop step, with back-off, a counter and a rate-limited log line.
pub struct Acceptor<L = TcpListener> {
    listener: L,
    /// Names the listener in the log and the metric.
    name: String,
    errors: Counter,
    backoff: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl<L: Listen> Acceptor<L> {
    pub fn new(listener: L, name: impl Into<String>, errors: Counter) -> Self {
        Self {
            listener,
            name: name.into(),
            errors,
            backoff: Duration::ZERO,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// The next connection; failures in between are counted, logged now and then, and
    /// waited out. Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self) -> (L::Stream, L::Peer) {
        loop {
            match std::future::poll_fn(|cx| self.listener.poll_accept(cx)).await {
                Ok(accepted) => {
                    self.backoff = Duration::ZERO;
                    return accepted;
                }
                Err(error) => {
                    self.failed(&error);
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }

    /// A connection already waiting in the accept queue, if any (the drain takes these).
    pub async fn queued(&mut self) -> Option<(L::Stream, L::Peer)> {
        let once = std::future::poll_fn(|cx| match self.listener.poll_accept(cx) {
            Poll::Ready(result) => Poll::Ready(Some(result)),
            Poll::Pending => Poll::Ready(None),
        });
        match once.await {
            Some(Ok(accepted)) => Some(accepted),
            Some(Err(error)) => {
                self.failed(&error);
                None
            }
            None => None,
        }
    }

    fn failed(&mut self, error: &io::Error) {
        self.errors.inc();
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        warn!(
            listener = %self.name,
            %error,
            not_logged = self.unlogged,
            retry_in = ?self.backoff,
            "accept failed; backing off (more failures since the last line: not_logged)"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_back_off_and_are_counted() {
        let listener = bind_listener("test", "127.0.0.1:0".parse().unwrap()).unwrap();
        let errors = Counter::default();
        let mut acceptor: Acceptor = Acceptor::new(listener, "test", errors.clone());
        let error = io::Error::other("EMFILE stand-in");
        let mut waits = Vec::new();
        for _ in 0..10 {
            acceptor.failed(&error);
            waits.push(acceptor.backoff);
        }
        assert_eq!(errors.get(), 10);
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        // Only the first failure was logged within the second; the rest are owed.
        assert_eq!(acceptor.unlogged, 9);
    }
}
