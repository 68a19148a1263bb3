//! Relaying bytes between the client and the destination: both directions at once, each
//! end's FIN passed on as a FIN (half-close), a reset on either side passed on as a reset.
//!
//! Between plain sockets, bytes move with splice(2) through a pipe per direction: socket → pipe → socket without
//! copying payload into user space, which is what keeps single-stream throughput close to a
//! direct connection. An idle connection holds no buffer memory (pipes allocate pages only
//! while data is in flight), at the price of four extra file descriptors.
use std::{
    io,
    net::Shutdown,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::Poll,
    time::{Duration, Instant},
};

use nix::fcntl::OFlag;
use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::{telemetry::metrics::ConnectionMetrics, tls::stream::MaybeTls};

/// Pipe capacity per direction; larger pipes let one splice move more of a fast stream.
/// The kernel may refuse the resize (pipe-max-size, per-user limits): the default 64 KiB works.
const PIPE_SIZE: libc::c_int = 256 * 1024;
/// Per direction when bytes pass through user space: a connection starts with one TLS
/// record's worth...
const COPY_BUFFER: usize = 16 * 1024;
/// ...and grows to this once a read fills it (a bulk transfer): one read then takes several
/// records and one write hands the kernel one large segment, instead of a system call each
/// way and a 16 KiB segment through every hop per record.
const COPY_BUFFER_BULK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("destination side: {0}")]
    Destination(io::Error),
    #[error("cannot create a relay pipe: {0}")]
    Pipe(io::Error),
    #[error("cut at the end of the drain period")]
    Cut,
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// Runs until both directions have seen EOF, or one side fails, or `cut` fires, or (with
/// `idle`) no byte has moved either way for that long (noticed within a quarter more). On
/// error the caller resets both sockets.
///
/// Plain text on both sides moves by splice(2); with TLS on either side the bytes pass
/// through user space to be encrypted or decrypted.
pub async fn relay(
    client: &mut MaybeTls,
    upstream: &mut MaybeTls,
    metrics: &ConnectionMetrics,
    transferred: &Transferred,
    cut: &CancellationToken,
    idle: Option<Duration>,
) -> Result<(), RelayError> {
    if let (MaybeTls::Plain(client), MaybeTls::Plain(upstream)) = (&*client, &*upstream) {
        let to_destination_pipe = Pipe::new().map_err(RelayError::Pipe)?;
        let to_client_pipe = Pipe::new().map_err(RelayError::Pipe)?;
        let to_destination = splice_half(
            client,
            upstream,
            &to_destination_pipe,
            &metrics.sent,
            &transferred.sent,
        );
        let to_client = splice_half(
            upstream,
            client,
            &to_client_pipe,
            &metrics.received,
            &transferred.received,
        );
        return both_ways(to_destination, to_client, transferred, cut, idle).await;
    }
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let to_destination = copy_half(
        client_read,
        upstream_write,
        &metrics.sent,
        &transferred.sent,
    );
    let to_client = copy_half(
        upstream_read,
        client_write,
        &metrics.received,
        &transferred.received,
    );
    both_ways(to_destination, to_client, transferred, cut, idle).await
}

/// Drives both directions until both are done, one fails, the relay is cut or idle.
async fn both_ways(
    to_destination: impl Future<Output = Result<(), Side>>,
    to_client: impl Future<Output = Result<(), Side>>,
    transferred: &Transferred,
    cut: &CancellationToken,
    idle: Option<Duration>,
) -> Result<(), RelayError> {
    tokio::pin!(to_destination, to_client);
    let mut watch = idle.map(IdleWatch::new);
    let (mut sent_done, mut received_done) = (false, false);
    while !(sent_done && received_done) {
        tokio::select! {
            () = idle_tick(watch.as_mut()) => {
                if let Some(watch) = &mut watch
                    && watch.expired(transferred.total())
                {
                    return Err(RelayError::Idle(watch.limit));
                }
            }
            result = &mut to_destination, if !sent_done => {
                result.map_err(|side| side.into_error(RelayError::Client, RelayError::Destination))?;
                sent_done = true;
            }
            result = &mut to_client, if !received_done => {
                result.map_err(|side| side.into_error(RelayError::Destination, RelayError::Client))?;
                received_done = true;
            }
            () = cut.cancelled() => return Err(RelayError::Cut),
        }
    }
    Ok(())
}

/// One direction through user space (TLS on a side): read, write, until EOF on `from`
/// (then a close_notify and FIN on `to`).
///
/// A TLS stream hands out at most one record (16 KiB) per read, so after the read that waited,
/// what else is ready is taken too — without waiting — and written at once.
async fn copy_half(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counter: &Counter,
    moved: &AtomicU64,
) -> Result<(), Side> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let mut filled = from.read(&mut buffer).await.map_err(Side::Read)?;
        if filled == 0 {
            return to.shutdown().await.map_err(Side::Write);
        }
        let mut ended = false;
        while filled < buffer.len() {
            match read_now(&mut from, &mut buffer[filled..]).await {
                Some(Ok(0)) => ended = true,
                Some(Ok(read)) => {
                    filled += read;
                    continue;
                }
                Some(Err(error)) => return Err(Side::Read(error)),
                None => {}
            }
            break;
        }
        to.write_all(&buffer[..filled]).await.map_err(Side::Write)?;
        to.flush().await.map_err(Side::Write)?;
        counter.inc_by(filled as u64);
        moved.fetch_add(filled as u64, Ordering::Relaxed);
        if ended {
            return to.shutdown().await.map_err(Side::Write);
        }
        if filled == buffer.len() && buffer.len() < COPY_BUFFER_BULK {
            buffer.resize(COPY_BUFFER_BULK, 0);
        }
    }
}

/// One read if it completes without waiting (None if it would wait; the task is then woken
/// when `from` is ready, which the next read that waits covers anyway).
async fn read_now(
    from: &mut (impl AsyncRead + Unpin),
    buffer: &mut [u8],
) -> Option<io::Result<usize>> {
    std::future::poll_fn(|cx| {
        let mut read = ReadBuf::new(buffer);
        match Pin::new(&mut *from).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Ready(None),
            Poll::Ready(result) => Poll::Ready(Some(result.map(|()| read.filled().len()))),
        }
    })
    .await
}

/// The bytes one connection moved, each way.
#[derive(Debug, Default)]
pub struct Transferred {
    /// Client to destination.
    pub sent: AtomicU64,
    /// Destination to client.
    pub received: AtomicU64,
}

impl Transferred {
    fn total(&self) -> u64 {
        self.sent.load(Ordering::Relaxed) + self.received.load(Ordering::Relaxed)
    }
}

/// Notices a connection on which nothing moved for `limit`.
struct IdleWatch {
    limit: Duration,
    tick: tokio::time::Interval,
    seen: u64,
    since: Instant,
}

impl IdleWatch {
    fn new(limit: Duration) -> Self {
        let mut tick = tokio::time::interval(limit / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            limit,
            tick,
            seen: 0,
            since: Instant::now(),
        }
    }

    fn expired(&mut self, moved: u64) -> bool {
        if moved != self.seen {
            self.seen = moved;
            self.since = Instant::now();
        }
        self.since.elapsed() >= self.limit
    }
}

async fn idle_tick(watch: Option<&mut IdleWatch>) {
    match watch {
        Some(watch) => {
            watch.tick.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Which end of one direction failed.
enum Side {
    Read(io::Error),
    Write(io::Error),
}

impl Side {
    fn into_error(
        self,
        reader: fn(io::Error) -> RelayError,
        writer: fn(io::Error) -> RelayError,
    ) -> RelayError {
        match self {
            Side::Read(error) => reader(error),
            Side::Write(error) => writer(error),
        }
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure leaves the default size.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Self { read, write })
    }
}

/// One direction: `from` → pipe → `to`, until EOF on `from` (then FIN on `to`).
///
/// What `from` has ready is taken before writing, so a FIN that came with the last data is
/// seen then, and that data leaves corked with the FIN in one segment. It matters for
/// connection churn: a client that reads a response and closes before the FIN has arrived
/// closes first and keeps its end in TIME_WAIT; every redirected connection of a pod goes to
/// the same proxy address, so those ends would use up the pod's ports toward it. With the FIN
/// on the data, as a server closing after its response sends it, the client's close is the
/// second one, as on a direct connection.
async fn splice_half(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    counter: &Counter,
    moved: &AtomicU64,
) -> Result<(), Side> {
    loop {
        let mut filled = ready_splice(
            from,
            Interest::READABLE,
            from.as_raw_fd(),
            pipe.write.as_raw_fd(),
            PIPE_SIZE as usize,
            0,
        )
        .await
        .map_err(Side::Read)?;
        let mut ended = filled == 0;
        while !ended && filled < PIPE_SIZE as usize {
            match from.try_io(Interest::READABLE, || {
                splice(
                    from.as_raw_fd(),
                    pipe.write.as_raw_fd(),
                    PIPE_SIZE as usize - filled,
                    0,
                )
            }) {
                Ok(0) => ended = true,
                Ok(read) => filled += read,
                // Nothing more yet (the pipe may also be full): pass on what is there.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(Side::Read(error)),
            }
        }
        let more = if ended { libc::SPLICE_F_MORE } else { 0 };
        let mut pending = filled;
        while pending > 0 {
            pending -= ready_splice(
                to,
                Interest::WRITABLE,
                pipe.read.as_raw_fd(),
                to.as_raw_fd(),
                pending,
                more,
            )
            .await
            .map_err(Side::Write)?;
        }
        counter.inc_by(filled as u64);
        moved.fetch_add(filled as u64, Ordering::Relaxed);
        if ended {
            // Pass the half-close on: the other side may still be sending.
            return SockRef::from(to)
                .shutdown(Shutdown::Write)
                .map_err(Side::Write);
        }
    }
}

/// Splices up to `len` bytes once `socket` is ready for `interest`; `flags` are added to
/// the non-blocking move.
async fn ready_splice(
    socket: &TcpStream,
    interest: Interest,
    from: RawFd,
    to: RawFd,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    loop {
        socket.ready(interest).await?;
        match socket.try_io(interest, || splice(from, to, len, flags)) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: plain splice(2) between fds owned by the caller, no offsets.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | flags,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(moved as usize)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::telemetry::metrics::ProxyMetrics;

    /// Both ends of one loopback TCP connection: (connecting side, accepted side).
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (connecting, accepted) = tokio::join!(connecting, listener.accept());
        (connecting.unwrap(), accepted.unwrap().0)
    }

    /// A server that answers and closes in one segment (its answer and FIN together, as a
    /// server closing after its response usually sends them) reaches the client the same way:
    /// once the client has read the answer, the FIN is there too, so the client's own close
    /// is the second close and leaves no TIME_WAIT on its side. Before the relay took the FIN
    /// along, it sent the answer, then the FIN in a segment of its own a moment later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fin_that_came_with_the_last_data_leaves_with_it() {
        const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for attempt in 0..50 {
            let (client, proxy_client_side) = connection().await;
            let (proxy_upstream_side, server) = connection().await;
            let relay = tokio::spawn(async move {
                let (mut from, mut to) = (
                    MaybeTls::Plain(proxy_client_side),
                    MaybeTls::Plain(proxy_upstream_side),
                );
                let transferred = Transferred::default();
                let metrics = ProxyMetrics::default().opened("test");
                relay(
                    &mut from,
                    &mut to,
                    &metrics,
                    &transferred,
                    &CancellationToken::new(),
                    None,
                )
                .await
            });
            // The client blocks in a read on a thread of its own, as an application does,
            // and looks for the FIN the moment the answer is there.
            let client = client.into_std().unwrap();
            client.set_nonblocking(false).unwrap();
            let reader = std::thread::spawn(move || {
                let mut answer = vec![0u8; ANSWER.len()];
                let mut read = 0;
                while read < answer.len() {
                    read += std::io::Read::read(&mut &client, &mut answer[read..]).unwrap();
                }
                let socket = SockRef::from(&client);
                socket.set_nonblocking(true).unwrap();
                let mut peek = [std::mem::MaybeUninit::new(0u8); 1];
                let fin_there = matches!(socket.peek(&mut peek), Ok(0));
                socket.set_nonblocking(false).unwrap();
                (answer, fin_there, client)
            });
            let server = server.into_std().unwrap();
            server.set_nonblocking(false).unwrap();
            // MSG_MORE holds the answer back until the shutdown adds the FIN to it.
            SockRef::from(&server)
                .send_with_flags(ANSWER, libc::MSG_MORE)
                .unwrap();
            server.shutdown(Shutdown::Write).unwrap();
            let (answer, fin_there, client) = tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(answer, ANSWER);
            assert!(
                fin_there,
                "attempt {attempt}: the answer came without its FIN"
            );
            drop((client, server));
            relay.await.unwrap().unwrap();
        }
    }
}
