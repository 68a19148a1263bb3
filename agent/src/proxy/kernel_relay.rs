//! What the proxy still watches of a socket pair the kernel relays (`redirect::sockmap`):
//! each side's end, and TCP's own byte counts, which say what has moved.
//!
//! The sockets leave the runtime's reactor: their data would wake it for nothing, as the
//! kernel takes every byte before the proxy could. Each direction instead gets an epoll set
//! that reports only a FIN (EPOLLRDHUP) or an error, never data or send space.
use std::{
    io,
    net::{Shutdown, TcpStream},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tokio::io::{Interest, unix::AsyncFd};

/// Wakes when `from` has had its FIN or an error, or `to` an error.
pub struct EndWatch(AsyncFd<OwnedFd>);

impl EndWatch {
    pub fn new(from: &TcpStream, to: &TcpStream) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // EPOLLERR and EPOLLHUP are always reported; nothing else is asked of `to`.
        epoll.add(
            from,
            EpollEvent::new(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET, 0),
        )?;
        epoll.add(to, EpollEvent::new(EpollFlags::EPOLLET, 1))?;
        // SAFETY: the AsyncFd owns the epoll fd, so the registered fd stays open and the same
        // for the AsyncFd's lifetime.
        let registered = unsafe { AsyncFd::register_with_interest(epoll.0, Interest::READABLE) };
        Ok(Self(registered.map_err(io::Error::from)?))
    }

    /// Waits for the next report (the caller then looks at the sockets themselves).
    pub async fn changed(&self) -> io::Result<()> {
        let mut ready = self.0.readable().await?;
        // SAFETY: epoll_event is plain data; zeroes are a valid value.
        let mut events: [libc::epoll_event; 2] = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: epoll_wait on our epoll fd into an array of the length given, no wait.
            let reported =
                unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 2, 0) };
            match reported {
                2 => continue,
                reported if reported < 0 => return Err(io::Error::last_os_error()),
                _ => break,
            }
        }
        ready.clear_ready();
        Ok(())
    }
}

/// Whether `socket` has had its FIN; its pending error, if it has one.
pub fn ended(socket: &TcpStream) -> io::Result<bool> {
    if let Some(error) = socket.take_error()? {
        return Err(error);
    }
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll of one pollfd we own, no wait.
    if unsafe { libc::poll(&mut poll, 1, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(poll.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}

/// The data bytes `socket` received before its FIN, read by anyone or not (to be asked once
/// the FIN is there: TCP counts it as a byte received).
pub fn received_before_fin(socket: &TcpStream) -> io::Result<u64> {
    Ok(tcp_info(socket.as_fd())?
        .tcpi_bytes_received
        .saturating_sub(1))
}

/// What has been given a socket to send, by TCP's own count, from a moment when the proxy
/// knew the figure. TCP counts every byte queued on the socket plus, on a socket that
/// connected, its SYN once acknowledged, and after a shutdown its FIN: the offset taken at
/// that moment removes the first, the figure kept at the shutdown the second.
pub struct Given {
    offset: u64,
    /// The figure when the socket was shut down (u64::MAX: not yet).
    at_shutdown: AtomicU64,
}

impl Given {
    /// `given`: the bytes the proxy has written to `socket` so far (nobody else writes now).
    pub fn since(socket: BorrowedFd<'_>, given: u64) -> io::Result<Self> {
        Ok(Self {
            offset: queued_ever(socket)?.saturating_sub(given),
            at_shutdown: AtomicU64::new(u64::MAX),
        })
    }

    pub fn now(&self, socket: &TcpStream) -> io::Result<u64> {
        match self.at_shutdown.load(Ordering::Relaxed) {
            u64::MAX => Ok(queued_ever(socket.as_fd())?.saturating_sub(self.offset)),
            at_shutdown => Ok(at_shutdown),
        }
    }

    /// Sends `socket`'s FIN after all it was given.
    pub fn shut_down(&self, socket: &TcpStream) -> io::Result<()> {
        let total = self.now(socket)?;
        self.at_shutdown.store(total, Ordering::Relaxed);
        socket.shutdown(Shutdown::Write)
    }
}

/// What the peer acknowledged plus what waits in the send queue. Read in that order, a
/// figure too low at worst, never too high.
fn queued_ever(socket: BorrowedFd<'_>) -> io::Result<u64> {
    let acknowledged = tcp_info(socket)?.tcpi_bytes_acked;
    let mut unacknowledged: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int, on a socket the caller holds.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unacknowledged) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acknowledged + u64::try_from(unacknowledged).unwrap_or(0))
}

fn tcp_info(socket: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt into a tcp_info of the size given, on a socket the caller holds.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
