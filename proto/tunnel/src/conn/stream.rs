//! The two halves of a stream on a [`super::Conn`], whichever transport carries it. Both are
//! tokio `AsyncRead`/`AsyncWrite` (for frames) and offer quinn's chunk calls (for the relay).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use quinn::{ReadError, ReadExactError, StoppedError, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tcp::{TcpRecv, TcpSend};

/// Most chunks [`RecvStream::read_ready`] takes at once. quinn hands out roughly one packet's
/// payload per chunk; passing them on one by one cost a syscall per ~1.4 KB and capped a
/// relay's throughput.
pub const READY_CHUNKS: usize = 16;

/// The stream was already finished or reset.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the stream is already closed")]
pub struct ClosedStream;

impl From<quinn::ClosedStream> for ClosedStream {
    fn from(_: quinn::ClosedStream) -> Self {
        Self
    }
}

impl From<ClosedStream> for io::Error {
    fn from(e: ClosedStream) -> Self {
        io::Error::new(io::ErrorKind::NotConnected, e)
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub enum SendStream {
    /// A QUIC stream's.
    Quic(quinn::SendStream),
    /// A TCP-transport stream's.
    Tcp(TcpSend),
}

impl From<TcpSend> for SendStream {
    fn from(send: TcpSend) -> Self {
        Self::Tcp(send)
    }
}

impl From<quinn::SendStream> for SendStream {
    fn from(send: quinn::SendStream) -> Self {
        Self::Quic(send)
    }
}

impl SendStream {
    /// The stream's id, the same at both ends of the connection.
    pub fn id(&self) -> u64 {
        match self {
            Self::Quic(send) => send.id().into(),
            Self::Tcp(send) => send.id(),
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), WriteError> {
        match self {
            Self::Quic(send) => send.write_all(buf).await,
            Self::Tcp(send) => send.write_chunk(Bytes::copy_from_slice(buf)).await,
        }
    }

    /// Writes `chunk` whole, without copying it where the transport allows.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), WriteError> {
        match self {
            Self::Quic(send) => send.write_chunk(chunk).await,
            Self::Tcp(send) => send.write_chunk(chunk).await,
        }
    }

    /// Writes every chunk of `chunks` whole, emptying them.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), WriteError> {
        match self {
            Self::Quic(send) => send.write_all_chunks(chunks).await,
            Self::Tcp(send) => {
                for chunk in chunks {
                    send.write_chunk(std::mem::take(chunk)).await?;
                }
                Ok(())
            }
        }
    }

    /// Ends the stream cleanly once what was written is sent.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        match self {
            Self::Quic(send) => Ok(send.finish()?),
            Self::Tcp(send) => send.finish(),
        }
    }

    /// Abandons the stream: the peer reads an error, not an end.
    pub fn reset(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        match self {
            Self::Quic(send) => Ok(send.reset(code)?),
            Self::Tcp(send) => send.reset(code),
        }
    }

    /// Completes when the peer has everything written (or stopped the stream).
    pub async fn stopped(&mut self) -> Result<Option<VarInt>, StoppedError> {
        match self {
            Self::Quic(send) => send.stopped().await,
            // What is written is in h2's queue, and TCP delivers it or the connection fails.
            Self::Tcp(_) => Ok(None),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            Self::Tcp(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            Self::Tcp(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            Self::Tcp(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub enum RecvStream {
    /// A QUIC stream's.
    Quic(quinn::RecvStream),
    /// A TCP-transport stream's.
    Tcp(TcpRecv),
}

impl From<TcpRecv> for RecvStream {
    fn from(recv: TcpRecv) -> Self {
        Self::Tcp(recv)
    }
}

impl From<quinn::RecvStream> for RecvStream {
    fn from(recv: quinn::RecvStream) -> Self {
        Self::Quic(recv)
    }
}

impl RecvStream {
    /// Reads what is ready into `buf`: `None` at the stream's end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        match self {
            Self::Quic(recv) => recv.read(buf).await,
            Self::Tcp(recv) => recv.read(buf).await,
        }
    }

    /// Fills `buf`, or fails if the stream ends first.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadExactError> {
        match self {
            Self::Quic(recv) => recv.read_exact(buf).await,
            Self::Tcp(recv) => recv.read_exact(buf).await,
        }
    }

    /// The next chunk, as the stream holds it (no copy): `None` at the stream's end.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        match self {
            Self::Quic(recv) => Ok(recv.read_chunk(usize::MAX, true).await?.map(|chunk| chunk.bytes)),
            Self::Tcp(recv) => recv.read_chunk().await,
        }
    }

    /// Waits for the next chunk, then takes whatever else is ready without waiting, at most
    /// [`READY_CHUNKS`] in all (no copies): `None` at the stream's end. What a relay passes on.
    ///
    /// - Memory: the batch is allocated once the first chunk is in, so a caller waiting here
    ///   holds none (an idle relay of a held connection, the common case), and it lives only
    ///   as long as the caller keeps it.
    /// - An error met while taking the rest is returned at once: quinn reports a reset once
    ///   and then reads as a clean end, so leaving it for the next call would pass a cut
    ///   stream for a complete one.
    pub async fn read_ready(&mut self) -> Result<Option<Vec<Bytes>>, ReadError> {
        let Some(first) = self.read_chunk().await? else {
            return Ok(None);
        };
        let mut ready = vec![Bytes::new(); READY_CHUNKS];
        ready[0] = first;
        let more = match self.read_chunks(&mut ready[1..]).now_or_never() {
            Some(Ok(Some(n))) => n,
            Some(Ok(None)) | None => 0,
            Some(Err(e)) => return Err(e),
        };
        ready.truncate(1 + more);
        Ok(Some(ready))
    }

    /// Reads whatever chunks are ready (at least one) into `bufs`: how many, or `None` at the
    /// stream's end.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, ReadError> {
        match self {
            Self::Quic(recv) => recv.read_chunks(bufs).await,
            Self::Tcp(recv) => recv.read_chunks(bufs).await,
        }
    }

    /// Tells the peer to stop sending: nothing more will be read.
    pub fn stop(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        match self {
            Self::Quic(recv) => Ok(recv.stop(code)?),
            Self::Tcp(recv) => recv.stop(code),
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(recv) => AsyncRead::poll_read(Pin::new(recv), cx, buf),
            Self::Tcp(recv) => AsyncRead::poll_read(Pin::new(recv), cx, buf),
        }
    }
}
