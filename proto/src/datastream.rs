//! The life of a data stream, for both ends: the opener sends an [`OpenStream`] and waits for
//! the [`OpenResult`]; the acceptor reads the header, dials, answers; then both relay.
//!
//! ```text
//! opener                                  acceptor
//!   open_bi ── OpenStream ─────────────▶  read_open (under a timeout)
//!                                         dial target
//!   (waits, under a timeout)  ◀── OpenResult ── complete
//!   relay  ◀══════════ raw bytes ══════════▶ relay
//! ```

use std::io;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;

use crate::relay::{RelayStats, relay};
use crate::stream::{StreamError, read_frame, write_frame};
use crate::wire::{OpenResult, OpenStream, close_code};

/// Why a data stream did not carry data.
#[derive(Debug, thiserror::Error)]
pub enum DataStreamError {
    /// The tunnel is gone or refused the stream.
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// The header or its answer did not come in time.
    #[error("timed out waiting for the stream header or its answer")]
    Timeout,
    /// The peer sent something that is not a valid header or answer.
    #[error("protocol error on the stream: {0}")]
    Protocol(StreamError),
    /// The other end could not (or would not) reach the target.
    #[error("{0}")]
    Refused(OpenResult),
    /// The relay failed after the stream was set up.
    #[error("relay: {0}")]
    Relay(io::Error),
}

impl From<StreamError> for DataStreamError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Io(e) => Self::Tunnel(e.to_string()),
            other => Self::Protocol(other),
        }
    }
}

/// Opens a stream on `conn`, sends `header` and waits for the answer (all within `timeout`);
/// on `Ok`, relays `tcp` through it until both directions end.
pub async fn open_and_relay(
    conn: &Connection,
    header: &OpenStream,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<RelayStats, DataStreamError> {
    let (send, recv) = tokio::time::timeout(timeout, async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| DataStreamError::Tunnel(e.to_string()))?;
        write_frame(&mut send, header).await?;
        match read_frame::<OpenResult, _>(&mut recv).await? {
            OpenResult::Ok => Ok((send, recv)),
            refused => Err(DataStreamError::Refused(refused)),
        }
    })
    .await
    .map_err(|_| DataStreamError::Timeout)??;
    relay(tcp, send, recv).await.map_err(DataStreamError::Relay)
}

/// Reads the header of a stream the peer opened. On error the caller should [`abort`].
pub async fn read_open(recv: &mut RecvStream, timeout: Duration) -> Result<OpenStream, DataStreamError> {
    tokio::time::timeout(timeout, read_frame::<OpenStream, _>(recv))
        .await
        .map_err(|_| DataStreamError::Timeout)?
        .map_err(Into::into)
}

/// Answers a stream the peer opened with the outcome of the dial, and relays on success.
pub async fn complete(
    mut send: SendStream,
    recv: RecvStream,
    dialed: Result<TcpStream, OpenResult>,
) -> Result<RelayStats, DataStreamError> {
    match dialed {
        Ok(tcp) => {
            write_frame(&mut send, &OpenResult::Ok).await?;
            relay(tcp, send, recv).await.map_err(DataStreamError::Relay)
        }
        Err(result) => {
            write_frame(&mut send, &result).await?;
            let _ = send.finish();
            Err(DataStreamError::Refused(result))
        }
    }
}

/// Resets both halves of a stream whose peer broke the protocol.
pub fn abort(mut send: SendStream, mut recv: RecvStream) {
    let code = VarInt::from_u32(close_code::PROTOCOL_ERROR);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}
