//! Network namespace cookies: the kernel's stable id of a namespace, which the connect hook
//! compares against (`bpf_get_netns_cookie`).
use std::{fs::File, io, net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};

use crate::dataplane::upstream::SocketFactory;

/// Not yet in the libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A network namespace as enrollment needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsInfo {
    pub cookie: u64,
    /// The IPv4 addresses of its interfaces (loopback left out): the pod's addresses, which
    /// the mesh's endpoints are matched against.
    pub addresses: Vec<Ipv4Addr>,
}

/// Opens the namespace file at `path` without ever blocking, and checks it is one. A FIFO's
/// open(2) waits for a writer — on the thread that asked, holding whatever it held (the
/// enrollment table: every proxied connection waited with it) — so the file is opened
/// non-blocking and must be on nsfs before anything enters it.
pub fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let filesystem = nix::sys::statfs::fstatfs(&file).map_err(io::Error::from)?;
    if filesystem.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)",
        ));
    }
    Ok(file)
}

/// The cookie and addresses of the network namespace at `path` (/run/netns/NAME,
/// /proc/PID/ns/net).
pub fn inspect(path: &Path) -> io::Result<NetnsInfo> {
    let ns = open(path)?;
    // setns changes only the calling thread's namespace: do it on a short-lived thread so no
    // runtime thread ever leaves the agent's own namespace.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|errno| match errno {
                    nix::Error::EINVAL => {
                        io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace")
                    }
                    other => io::Error::from(other),
                })?;
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                let cookie = socket_netns_cookie(&socket)?;
                let addresses = nix::ifaddrs::getifaddrs()
                    .map_err(io::Error::from)?
                    .filter_map(|ifaddr| ifaddr.address?.as_sockaddr_in().map(|a| a.ip()))
                    .filter(|ip| !ip.is_loopback())
                    .collect();
                Ok(NetnsInfo { cookie, addresses })
            })
            .join()
            .map_err(|_| io::Error::other("netns cookie thread panicked"))?
    })
}

/// A thread living in a pod's network namespace that opens sockets there for the proxy: its
/// inbound listener (where sk_lookup hands the pod's captured connections) and the sockets
/// that reach the pod's application on loopback. Runtime threads never change namespace; a
/// socket stays in the namespace it was created in wherever it is used.
pub struct PodNet {
    requests: std::sync::mpsc::Sender<SocketRequest>,
}

enum SocketRequest {
    Stream(std::sync::mpsc::Sender<io::Result<Socket>>),
    Listener(
        std::net::SocketAddr,
        std::sync::mpsc::Sender<io::Result<std::net::TcpListener>>,
    ),
}

impl PodNet {
    /// Starts the thread in the namespace at `path`; it ends when this is dropped.
    pub fn enter(path: &Path) -> io::Result<Self> {
        let ns = open(path)?;
        let (requests, incoming) = std::sync::mpsc::channel::<SocketRequest>();
        let (ready, entered) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mesh-podnet".into())
            .spawn(move || {
                if let Err(errno) = setns(&ns, CloneFlags::CLONE_NEWNET) {
                    let _ = ready.send(Err(io::Error::from(errno)));
                    return;
                }
                let _ = ready.send(Ok(()));
                for request in incoming {
                    match request {
                        SocketRequest::Stream(reply) => {
                            let _ = reply.send(Socket::new(Domain::IPV4, Type::STREAM, None));
                        }
                        SocketRequest::Listener(addr, reply) => {
                            let _ = reply.send(listen(addr));
                        }
                    }
                }
            })?;
        entered
            .recv()
            .map_err(|_| io::Error::other("namespace thread ended"))??;
        Ok(Self { requests })
    }

    /// A new, unconnected IPv4 TCP socket in the pod's namespace.
    pub fn stream_socket(&self) -> io::Result<Socket> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests
            .send(SocketRequest::Stream(reply))
            .map_err(|_| io::Error::other("namespace thread ended"))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("namespace thread ended"))?
    }

    /// A listening socket on `addr` in the pod's namespace.
    pub fn listener(&self, addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests
            .send(SocketRequest::Listener(addr, reply))
            .map_err(|_| io::Error::other("namespace thread ended"))?;
        answer
            .recv()
            .map_err(|_| io::Error::other("namespace thread ended"))?
    }
}

/// Upstreams of a captured pod (its application on loopback) connect from inside it.
impl SocketFactory for PodNet {
    fn stream_socket(&self, _addr: std::net::SocketAddr) -> io::Result<Socket> {
        PodNet::stream_socket(self)
    }
}

fn listen(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // The next agent listens beside this one during an upgrade; the lookup program picks
    // each agent's own socket, never the group.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The cookie of the namespace a socket belongs to.
pub fn socket_netns_cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_cookie_matches_socket_cookie() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let own = socket_netns_cookie(&socket).unwrap();
        assert_ne!(own, 0);
        // Reading our own namespace through its path needs setns, which needs CAP_SYS_ADMIN.
        if let Ok(info) = inspect(Path::new("/proc/self/ns/net")) {
            assert_eq!(info.cookie, own);
        }
    }

    #[test]
    fn regular_file_is_not_a_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = inspect(file.path()).unwrap_err();
        assert!(
            err.kind() == io::ErrorKind::InvalidInput
                || err.kind() == io::ErrorKind::PermissionDenied,
            "{err}"
        );
    }
}
