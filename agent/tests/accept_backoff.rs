//! Out of file descriptors, accept(2) fails at once, again and again: the accept loop must
//! wait that out instead of spinning (a finding: 945 MB of log in 6 s at 100 % CPU, health
//! checks failing). Its own test binary, so lowering the descriptor limit touches no other
//! test.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Duration;

use mesh_agent::listen::{Acceptor, bind_listener};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use prometheus_client::metrics::counter::Counter;

#[tokio::test]
async fn accept_failures_back_off_instead_of_spinning_and_recover() {
    let listener = bind_listener("test", "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let errors = Counter::default();
    let mut acceptor: Acceptor = Acceptor::new(listener, "test", errors.clone());
    // A client waits in the accept queue while the process has no descriptor left.
    let _client = std::net::TcpStream::connect(addr).unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 512.min(soft), hard).unwrap();
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(error) if error.raw_os_error() == Some(libc::EMFILE) => break,
            Err(error) => panic!("{error}"),
        }
    }
    let accepting = tokio::spawn(async move { acceptor.accept().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failures = errors.get();
    // Backing off 5 ms, doubling to 1 s: about 8 tries in a second; a spin makes thousands.
    assert!(
        (2..=15).contains(&failures),
        "{failures} accept failures in one second"
    );
    drop(hogs);
    let (stream, _) = tokio::time::timeout(Duration::from_secs(3), accepting)
        .await
        .expect("accepting resumes once descriptors are free")
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap().ip(), addr.ip());
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}
