//! Relaying bytes between the client and the destination: both directions at once, each
//! end's FIN passed on as a FIN (half-close), a reset on either side passed on as a reset.
//!
//! Between plain sockets, bytes move with splice(2) through a pipe per direction: socket → pipe → socket without
//! copying payload into user space. An idle connection holds no buffer memory (pipes allocate
//! pages only while data is in flight), at the price of four extra file descriptors.
//!
//! A plain relay that lasts beyond [`KERNEL_RELAY_AFTER`] is handed to the kernel when the
//! node loaded the sockmap program (`redirect::sockmap`): its bytes then move from one socket
//! to the other without waking the proxy at all, and its pipes are closed.
use std::{
    io,
    net::Shutdown,
    os::fd::{AsFd as _, AsRawFd, OwnedFd, RawFd},
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
use tracing::debug;

use super::kernel_relay::{self, Given};
use crate::{
    redirect::sockmap::Sockmap, telemetry::metrics::ConnectionMetrics, tls::stream::MaybeTls,
};

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
/// error both sockets are closed with a reset.
///
/// Plain text on both sides moves by splice(2), and with `sockmap` a connection that lasts
/// is handed to the kernel after [`KERNEL_RELAY_AFTER`]; with TLS on either side the bytes
/// pass through user space to be encrypted or decrypted.
pub async fn relay(
    client: MaybeTls,
    upstream: MaybeTls,
    counted: Counted<'_>,
    cut: &CancellationToken,
    idle: Option<Duration>,
    sockmap: Option<&Sockmap>,
) -> Result<(), RelayError> {
    let (client, upstream) = match (client, upstream) {
        (MaybeTls::Plain(client), MaybeTls::Plain(upstream)) => {
            return relay_plain(client, upstream, counted, cut, idle, sockmap).await;
        }
        ends => ends,
    };
    let (mut client, mut upstream) = (client, upstream);
    let result = copy_both_ways(&mut client, &mut upstream, counted, cut, idle).await;
    if result.is_err() {
        reset_on_close(SockRef::from(client.tcp()));
        reset_on_close(SockRef::from(upstream.tcp()));
    }
    result
}

/// How long a plain relay splices before the kernel takes it over. Short connections (a
/// request each) end before: joining costs a few system calls, and the FIN of a spliced
/// relay leaves with the last data (see [`splice_half`]), which joined sockets cannot do.
pub const KERNEL_RELAY_AFTER: Duration = Duration::from_millis(500);
/// How often the byte counters of a relay the kernel moves are brought up to date when no
/// idle limit asks for more often.
const KERNEL_COUNT_EVERY: Duration = Duration::from_secs(5);

/// Where a relay counts what it moves: the destination's connection counters and the
/// connection's own totals.
#[derive(Clone, Copy)]
pub struct Counted<'a> {
    pub metrics: &'a ConnectionMetrics,
    pub transferred: &'a Transferred,
}

async fn copy_both_ways(
    client: &mut MaybeTls,
    upstream: &mut MaybeTls,
    counted: Counted<'_>,
    cut: &CancellationToken,
    idle: Option<Duration>,
) -> Result<(), RelayError> {
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let to_destination = copy_half(
        client_read,
        upstream_write,
        &counted.metrics.sent,
        &counted.transferred.sent,
    );
    let to_client = copy_half(
        upstream_read,
        client_write,
        &counted.metrics.received,
        &counted.transferred.received,
    );
    let ticks = Ticks::new(idle, None);
    both_ways(
        to_destination,
        to_client,
        counted.transferred,
        cut,
        ticks,
        || (),
    )
    .await
    .map(drop)
}

/// Splices, and (with `sockmap`) after [`KERNEL_RELAY_AFTER`] hands the pair to the kernel
/// at a moment when no byte is between the sockets in the proxy.
async fn relay_plain(
    client: TcpStream,
    upstream: TcpStream,
    counted: Counted<'_>,
    cut: &CancellationToken,
    idle: Option<Duration>,
    sockmap: Option<&Sockmap>,
) -> Result<(), RelayError> {
    let result = splice_until_handed_over(&client, &upstream, counted, cut, idle, sockmap).await;
    match result {
        Ok(Some(given)) => relay_in_kernel(client, upstream, given, counted, cut, idle).await,
        Ok(None) => Ok(()),
        Err(error) => {
            reset_on_close(SockRef::from(&client));
            reset_on_close(SockRef::from(&upstream));
            Err(error)
        }
    }
}

/// Splices both ways until both end (None), or until both directions stopped for the
/// hand-over and the kernel took the pair (what had been given each side by then: upstream,
/// client).
async fn splice_until_handed_over(
    client: &TcpStream,
    upstream: &TcpStream,
    counted: Counted<'_>,
    cut: &CancellationToken,
    idle: Option<Duration>,
    mut sockmap: Option<&Sockmap>,
) -> Result<Option<[Given; 2]>, RelayError> {
    let to_destination_pipe = Pipe::new().map_err(RelayError::Pipe)?;
    let to_client_pipe = Pipe::new().map_err(RelayError::Pipe)?;
    let mut ended = [false, false];
    loop {
        let stop = CancellationToken::new();
        let to_destination = splice_half(
            client,
            upstream,
            &to_destination_pipe,
            &counted.metrics.sent,
            &counted.transferred.sent,
            &stop,
        );
        let to_client = splice_half(
            upstream,
            client,
            &to_client_pipe,
            &counted.metrics.received,
            &counted.transferred.received,
            &stop,
        );
        let hand_over = sockmap.map(|_| (Instant::now() + KERNEL_RELAY_AFTER, &stop));
        let ticks = Ticks::new(idle, hand_over);
        let halves = both_ways(
            skip_if(ended[0], to_destination),
            skip_if(ended[1], to_client),
            counted.transferred,
            cut,
            ticks,
            || (),
        )
        .await?;
        ended = halves.map(|half| half == Half::Ended);
        if ended == [true, true] {
            return Ok(None);
        }
        // Both stopped with nothing in their pipes: the kernel may take over. A direction that
        // ended meanwhile has had a FIN the kernel cannot take; splicing goes on.
        if let (Some(kernel), [false, false]) = (sockmap, ended) {
            let given = [
                (upstream.as_fd(), &counted.transferred.sent),
                (client.as_fd(), &counted.transferred.received),
            ]
            .map(|(socket, given)| Given::since(socket, given.load(Ordering::Relaxed)));
            let joined = match given {
                [Ok(to_upstream), Ok(to_client)] => kernel
                    .join(client.as_fd(), upstream.as_fd())
                    .map(|()| [to_upstream, to_client]),
                [Err(error), _] | [_, Err(error)] => Err(error),
            };
            match joined {
                Ok(given) => return Ok(Some(given)),
                Err(error) => debug!(%error, "cannot hand the relay to the kernel; splicing on"),
            }
        }
        sockmap = None;
    }
}

/// `half`, unless its direction has already ended.
async fn skip_if(
    ended: bool,
    half: impl Future<Output = Result<Half, Side>>,
) -> Result<Half, Side> {
    match ended {
        true => Ok(Half::Ended),
        false => half.await,
    }
}

/// The pair is joined: the kernel moves the bytes; here each end is passed on, and the
/// counters follow TCP's own.
async fn relay_in_kernel(
    client: TcpStream,
    upstream: TcpStream,
    [to_upstream, to_client]: [Given; 2],
    counted: Counted<'_>,
    cut: &CancellationToken,
    idle: Option<Duration>,
) -> Result<(), RelayError> {
    let _active = counted.metrics.kernel.handed_over();
    let (client, upstream) = match (client.into_std(), upstream.into_std()) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(error), _) | (_, Err(error)) => return Err(RelayError::Client(error)),
    };
    let count = || {
        count_given(
            &upstream,
            &to_upstream,
            &counted.metrics.sent,
            &counted.transferred.sent,
        );
        count_given(
            &client,
            &to_client,
            &counted.metrics.received,
            &counted.transferred.received,
        );
    };
    let ticks = Ticks::new(idle, None).counting_every(KERNEL_COUNT_EVERY);
    let result = both_ways(
        kernel_half(&client, &upstream, &to_upstream),
        kernel_half(&upstream, &client, &to_client),
        counted.transferred,
        cut,
        ticks,
        count,
    )
    .await;
    count();
    if result.is_err() {
        reset_on_close(SockRef::from(&client));
        reset_on_close(SockRef::from(&upstream));
    }
    result.map(drop)
}

/// One direction the kernel relays: once `from` has its FIN and everything it received is
/// queued on `to`, the FIN is passed on.
async fn kernel_half(
    from: &std::net::TcpStream,
    to: &std::net::TcpStream,
    given_to: &Given,
) -> Result<Half, Side> {
    let watch = kernel_relay::EndWatch::new(from, to).map_err(Side::Read)?;
    while !kernel_relay::ended(from).map_err(Side::Read)? {
        if let Some(error) = to.take_error().map_err(Side::Write)? {
            return Err(Side::Write(error));
        }
        watch.changed().await.map_err(Side::Read)?;
    }
    // The kernel queues the last bytes from its own work queue: the FIN must not pass them.
    let received = kernel_relay::received_before_fin(from).map_err(Side::Read)?;
    let mut pause = Duration::from_micros(100);
    while given_to.now(to).map_err(Side::Write)? < received {
        if let Some(error) = to.take_error().map_err(Side::Write)? {
            return Err(Side::Write(error));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    given_to.shut_down(to).map_err(Side::Write)?;
    Ok(Half::Ended)
}

/// Brings one direction's counters up to what TCP says its destination socket was given.
fn count_given(to: &std::net::TcpStream, given: &Given, counter: &Counter, moved: &AtomicU64) {
    if let Ok(total) = given.now(to) {
        let before = moved.swap(total, Ordering::Relaxed);
        counter.inc_by(total.saturating_sub(before));
    }
}

/// How a direction finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    /// Its end was passed on.
    Ended,
    /// Stopped for the hand-over to the kernel, with nothing in flight.
    Stopped,
}

/// Drives both directions until each has ended or stopped, one fails, the relay is cut or
/// idle. `count` brings `transferred` up to date before it is looked at.
async fn both_ways(
    to_destination: impl Future<Output = Result<Half, Side>>,
    to_client: impl Future<Output = Result<Half, Side>>,
    transferred: &Transferred,
    cut: &CancellationToken,
    mut ticks: Ticks<'_>,
    count: impl Fn(),
) -> Result<[Half; 2], RelayError> {
    tokio::pin!(to_destination, to_client);
    let (mut sent, mut received) = (None, None);
    loop {
        if let (Some(sent), Some(received)) = (sent, received) {
            return Ok([sent, received]);
        }
        tokio::select! {
            () = ticks.next() => {
                count();
                if let Some(limit) = ticks.idle_expired(transferred.total()) {
                    return Err(RelayError::Idle(limit));
                }
                if sent.is_none() && received.is_none() {
                    ticks.hand_over_if_due();
                }
            }
            result = &mut to_destination, if sent.is_none() => {
                sent = Some(result.map_err(|side| side.into_error(RelayError::Client, RelayError::Destination))?);
            }
            result = &mut to_client, if received.is_none() => {
                received = Some(result.map_err(|side| side.into_error(RelayError::Destination, RelayError::Client))?);
            }
            () = cut.cancelled() => return Err(RelayError::Cut),
        }
    }
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
) -> Result<Half, Side> {
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let mut filled = from.read(&mut buffer).await.map_err(Side::Read)?;
        if filled == 0 {
            to.shutdown().await.map_err(Side::Write)?;
            return Ok(Half::Ended);
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
            to.shutdown().await.map_err(Side::Write)?;
            return Ok(Half::Ended);
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

/// Has the socket's close send RST rather than FIN, so the other end learns at once that the
/// connection failed.
pub fn reset_on_close(socket: SockRef<'_>) {
    let _ = socket.set_linger(Some(Duration::ZERO));
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

/// A relay's timer: it notices a connection on which nothing moved for the idle limit, has
/// the counters of a relay the kernel moves read, and starts the hand-over to the kernel.
struct Ticks<'a> {
    tick: Option<tokio::time::Interval>,
    idle: Option<IdleWatch>,
    /// When, and the signal that stops both spliced directions for it.
    hand_over: Option<(Instant, &'a CancellationToken)>,
}

/// What the idle limit needs to know.
struct IdleWatch {
    limit: Duration,
    seen: u64,
    since: Instant,
}

impl<'a> Ticks<'a> {
    fn new(idle: Option<Duration>, hand_over: Option<(Instant, &'a CancellationToken)>) -> Self {
        let mut ticks = Self {
            tick: None,
            idle: idle.map(|limit| IdleWatch {
                limit,
                seen: 0,
                since: Instant::now(),
            }),
            hand_over,
        };
        if let Some(limit) = idle {
            ticks = ticks.every(limit / 4);
        }
        if hand_over.is_some() {
            ticks = ticks.every(KERNEL_RELAY_AFTER);
        }
        ticks
    }

    /// Ticks at least this often.
    fn counting_every(self, period: Duration) -> Self {
        self.every(period)
    }

    fn every(mut self, period: Duration) -> Self {
        let period = match &self.tick {
            Some(tick) => tick.period().min(period),
            None => period,
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.tick = Some(tick);
        self
    }

    async fn next(&mut self) {
        match &mut self.tick {
            Some(tick) => {
                tick.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// The idle limit, if nothing has moved (`moved` is the running total) for that long.
    fn idle_expired(&mut self, moved: u64) -> Option<Duration> {
        let watch = self.idle.as_mut()?;
        if moved != watch.seen {
            watch.seen = moved;
            watch.since = Instant::now();
        }
        (watch.since.elapsed() >= watch.limit).then_some(watch.limit)
    }

    fn hand_over_if_due(&mut self) {
        if let Some((due, stop)) = self.hand_over
            && Instant::now() >= due
        {
            stop.cancel();
            self.hand_over = None;
        }
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
    stop: &CancellationToken,
) -> Result<Half, Side> {
    loop {
        // The pipe is empty here, and only here may the direction stop.
        let wait_for_data = ready_splice(
            from,
            Interest::READABLE,
            from.as_raw_fd(),
            pipe.write.as_raw_fd(),
            PIPE_SIZE as usize,
            0,
        );
        let mut filled = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(Half::Stopped),
            read = wait_for_data => read.map_err(Side::Read)?,
        };
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
            SockRef::from(to)
                .shutdown(Shutdown::Write)
                .map_err(Side::Write)?;
            return Ok(Half::Ended);
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
                let transferred = Transferred::default();
                let metrics = ProxyMetrics::default().opened("test");
                let counted = Counted {
                    metrics: &metrics,
                    transferred: &transferred,
                };
                relay(
                    MaybeTls::Plain(proxy_client_side),
                    MaybeTls::Plain(proxy_upstream_side),
                    counted,
                    &CancellationToken::new(),
                    None,
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
