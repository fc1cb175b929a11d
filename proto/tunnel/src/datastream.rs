//! The life of a data stream, for both ends: the opener sends an [`OpenStream`] and its user's
//! bytes right behind it; the acceptor reads the header, dials, answers with an [`OpenResult`],
//! and only then reads the payload; then both relay.
//!
//! ```text
//! opener                                  acceptor
//!   open_bi ── OpenStream ─────────────▶  read_open (under a timeout)
//!   user bytes ═══════════════════════▶  (wait in the stream window, unread)
//!                                         dial target
//!   reads the answer first  ◀── OpenResult ── complete
//!   relay  ◀══════════ raw bytes ══════════▶ relay
//! ```
//!
//! The acceptor's side is [`read_header`], then (for TCP) [`complete`] with the dial's outcome,
//! or [`crate::udp::flow::accept`] for a UDP flow.
//!
//! Pipelining saves the user a round trip on every new connection. The acceptor never sends
//! payload before its answer, and never reads payload before deciding; a refusal discards what
//! was pipelined (the user's connection is closed either way).

use std::io;
use std::time::Duration;

use quinn::VarInt;
use tokio::net::TcpStream;
use tracing::debug;
use wmproxy_wire::{OpenResult, OpenStream, close_code};

use crate::Side;
use crate::conn::{Conn, RecvStream, SendStream};
use crate::relay::{Limits, RelayStats, relay_gated};
use crate::stream::{StreamError, read_frame, write_frame};

/// Why a data stream did not carry data.
#[derive(Debug, thiserror::Error)]
pub enum DataStreamError {
    /// The tunnel's connection is gone, so no stream could be opened.
    #[error("tunnel lost: {0}")]
    Connection(#[source] quinn::ConnectionError),
    /// The header or its answer did not come in time.
    #[error("timed out waiting for the stream header or its answer")]
    Timeout,
    /// The stream failed, or the peer sent something that is not a valid header or answer.
    #[error("stream: {0}")]
    Stream(#[source] StreamError),
    /// The other end could not (or would not) reach the target.
    #[error("{0}")]
    Refused(OpenResult),
    /// The relay failed after the stream was set up (either socket, or the stream).
    #[error("relay: {0}")]
    Relay(#[source] io::Error),
}

impl DataStreamError {
    /// Whose fault it is. A relay failure is counted as the tunnel's: after setup, either
    /// socket or the stream may have broken, and the relay cannot tell which.
    pub fn side(&self) -> Side {
        match self {
            Self::Connection(_) | Self::Timeout | Self::Stream(_) | Self::Relay(_) => Side::Tunnel,
            Self::Refused(result) => Side::of_refusal(*result),
        }
    }
}

impl From<StreamError> for DataStreamError {
    fn from(e: StreamError) -> Self {
        Self::Stream(e)
    }
}

/// Opens a stream on `conn` and sends `header`, then relays `tcp` through it until both
/// directions end.
///
/// The user's bytes are pipelined: they follow the header at once instead of waiting a round
/// trip for the answer, which the QUIC → TCP direction reads (within `timeout`) before anything
/// else. If the answer is not `Ok`, both directions are aborted and the early bytes discarded.
pub async fn open_and_relay(
    conn: &Conn,
    header: &OpenStream,
    tcp: TcpStream,
    (timeout, limits): (Duration, &Limits<'_>),
) -> Result<RelayStats, DataStreamError> {
    let opened = open_pipelined(conn, header, timeout).await?;
    let mut failure = None;
    let relayed = relay_gated(
        tcp,
        opened,
        async |recv| {
            let Err(error) = read_answer(recv, timeout).await else {
                return Ok(());
            };
            // A refusal is not an abort: the relay closes the user's connection instead of
            // resetting it. A target that reset the connection is one.
            let kind = if matches!(error, DataStreamError::Refused(r) if r != OpenResult::Reset) {
                io::ErrorKind::ConnectionRefused
            } else {
                io::ErrorKind::Other
            };
            let io_error = io::Error::new(kind, error.to_string());
            failure = Some(error);
            Err(io_error)
        },
        limits,
    )
    .await;
    relayed.map_err(|e| failure.take().unwrap_or(DataStreamError::Relay(e)))
}

/// Opens a stream on `conn` (within `timeout`) and sends `header`, without waiting for the
/// answer: the opener's half of a pipelined stream, whose payload may follow at once. The
/// answer is read with [`read_answer`].
pub async fn open_pipelined(
    conn: &Conn,
    header: &OpenStream,
    timeout: Duration,
) -> Result<(SendStream, RecvStream), DataStreamError> {
    let (mut send, recv) = tokio::time::timeout(timeout, conn.open_bi())
        .await
        .map_err(|_| DataStreamError::Timeout)?
        .map_err(DataStreamError::Connection)?;
    write_frame(&mut send, header).await?;
    Ok((send, recv))
}

/// Reads the answer to a stream's header, within `timeout`: `Ok` for [`OpenResult::Ok`], else
/// the refusal, the timeout or the stream's failure.
pub async fn read_answer(recv: &mut RecvStream, timeout: Duration) -> Result<(), DataStreamError> {
    match tokio::time::timeout(timeout, read_frame::<OpenResult, _>(recv)).await {
        Ok(Ok(OpenResult::Ok)) => Ok(()),
        Ok(Ok(refused)) => Err(DataStreamError::Refused(refused)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(DataStreamError::Timeout),
    }
}

/// Opens a stream on `conn`, sends `header` and waits (within `timeout` in all) for an `Ok`
/// answer, without sending payload first: for callers that try another backend when this one
/// fails, and so must not have consumed the user's bytes.
pub async fn open_confirmed(
    conn: &Conn,
    header: &OpenStream,
    timeout: Duration,
) -> Result<(SendStream, RecvStream), DataStreamError> {
    let opened = async {
        let (send, mut recv) = open_pipelined(conn, header, timeout).await?;
        read_answer(&mut recv, timeout).await?;
        Ok((send, recv))
    };
    tokio::time::timeout(timeout, opened).await.map_err(|_| DataStreamError::Timeout)?
}

/// Reads the header of a stream the peer opened, within `timeout`. A bad or late header resets
/// the stream (logged) and gives `None`.
pub async fn read_header(
    send: SendStream,
    mut recv: RecvStream,
    timeout: Duration,
) -> Option<(SendStream, RecvStream, OpenStream)> {
    let header = tokio::time::timeout(timeout, read_frame::<OpenStream, _>(&mut recv)).await;
    let error = match header {
        Ok(Ok(header)) => return Some((send, recv, header)),
        Ok(Err(e)) => DataStreamError::from(e),
        Err(_) => DataStreamError::Timeout,
    };
    debug!(error = %error, "bad data stream; resetting it");
    abort(send, recv);
    None
}

/// Answers a TCP stream the peer opened with the outcome of the dial, and on success relays
/// until both directions end. Logs the outcome in the current span, and returns it.
pub async fn complete(
    send: SendStream,
    recv: RecvStream,
    dialed: Result<TcpStream, OpenResult>,
) -> Result<RelayStats, DataStreamError> {
    complete_within(send, recv, dialed, &Limits::default()).await
}

/// [`complete`], with the relay within `limits` (this end's bandwidth, an idle timeout).
pub async fn complete_within(
    send: SendStream,
    recv: RecvStream,
    dialed: Result<TcpStream, OpenResult>,
    limits: &Limits<'_>,
) -> Result<RelayStats, DataStreamError> {
    let result = match dialed {
        Ok(tcp) => answer_and_relay(send, recv, tcp, limits).await,
        Err(result) => {
            refuse(send, result).await;
            Err(DataStreamError::Refused(result))
        }
    };
    match &result {
        Ok(stats) => debug!(from_peer = stats.quic_to_tcp, to_peer = stats.tcp_to_quic, "stream finished"),
        Err(DataStreamError::Refused(result)) => debug!(%result, "stream refused"),
        Err(e) => debug!(error = %e, side = %e.side(), "stream aborted"),
    }
    result
}

async fn answer_and_relay(
    mut send: SendStream,
    recv: RecvStream,
    tcp: TcpStream,
    limits: &Limits<'_>,
) -> Result<RelayStats, DataStreamError> {
    if let Err(e) = write_frame(&mut send, &OpenResult::Ok).await {
        // The opener gave up on the stream (a reset or a stop) while we dialed: it aborted, so
        // the target sees an abort too, not a clean end.
        crate::relay::reset(tcp);
        return Err(e.into());
    }
    relay_gated(tcp, (send, recv), async |_| Ok(()), limits).await.map_err(DataStreamError::Relay)
}

/// Answers a stream the peer opened with `Ok` and one more frame, `reply`, and ends it (a
/// stream that carries one answer rather than a relay: a rendezvous, a punch).
pub async fn reply<T: wmproxy_wire::WireMessage>(
    mut send: SendStream,
    mut recv: RecvStream,
    reply: &T,
) -> Result<(), StreamError> {
    write_frame(&mut send, &OpenResult::Ok).await?;
    write_frame(&mut send, reply).await?;
    let _ = send.finish();
    let _ = recv.stop(VarInt::from_u32(0));
    Ok(())
}

/// Answers a stream the peer opened with a refusal and ends it.
pub async fn refuse(mut send: SendStream, result: OpenResult) {
    if write_frame(&mut send, &result).await.is_ok() {
        let _ = send.finish();
    }
}

/// Resets both halves of a stream whose peer broke the protocol.
pub fn abort(mut send: SendStream, mut recv: RecvStream) {
    let code = VarInt::from_u32(close_code::PROTOCOL_ERROR);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}
