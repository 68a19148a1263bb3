//! Relaying bytes between the client and the destination: both directions at once, each
//! end's FIN passed on as a FIN (half-close), a reset on either side passed on as a reset.
use std::io;

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};
use tokio_util::sync::CancellationToken;

use crate::metrics::ConnectionMetrics;

/// Per direction. Large enough that one read usually drains what a fast sender queued.
const BUFFER_SIZE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client side: {0}")]
    Client(io::Error),
    #[error("destination side: {0}")]
    Destination(io::Error),
    #[error("cut at the end of the drain period")]
    Cut,
}

/// Runs until both directions have seen EOF, or one side fails, or `cut` fires. On error the
/// caller resets both sockets.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    metrics: &ConnectionMetrics,
    cut: &CancellationToken,
) -> Result<(), RelayError> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let to_destination = copy_half(&mut client_read, &mut upstream_write, &metrics.sent);
    let to_client = copy_half(&mut upstream_read, &mut client_write, &metrics.received);
    tokio::pin!(to_destination, to_client);
    let (mut sent_done, mut received_done) = (false, false);
    while !(sent_done && received_done) {
        tokio::select! {
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

/// Which end of one copy failed.
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

async fn copy_half(
    reader: &mut ReadHalf<'_>,
    writer: &mut WriteHalf<'_>,
    counter: &Counter,
) -> Result<(), Side> {
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let n = reader.read(&mut buffer).await.map_err(Side::Read)?;
        if n == 0 {
            // Pass the half-close on: the other side may still be sending.
            return writer.shutdown().await.map_err(Side::Write);
        }
        writer.write_all(&buffer[..n]).await.map_err(Side::Write)?;
        counter.inc_by(n as u64);
    }
}
