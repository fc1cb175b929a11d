//! The halves of one stream over the TCP transport: an HTTP/2 stream's request or response
//! body. Data is handed over as the `Bytes` h2 received it, and the flow-control window is
//! given back as soon as a chunk leaves h2's buffer, as quinn gives back credit when a chunk is
//! read.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::Reason;
use quinn::{ReadError, ReadExactError, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::state::State;
use crate::conn::ClosedStream;

/// Bytes asked of h2's flow control per write.
const WRITE_CHUNK: usize = 64 * 1024;

/// The sending half: a request body (the stream's opener) or a response body.
#[derive(Debug)]
pub struct TcpSend {
    send: h2::SendStream<Bytes>,
    state: Arc<State>,
}

impl TcpSend {
    pub(super) fn new(send: h2::SendStream<Bytes>, state: Arc<State>) -> Self {
        Self { send, state }
    }

    /// The HTTP/2 stream id, the same at both ends.
    pub fn id(&self) -> u64 {
        u64::from(self.send.stream_id().as_u32())
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<Result<(), WriteError>> {
        while !chunk.is_empty() {
            if self.send.capacity() == 0 {
                self.send.reserve_capacity(chunk.len().min(WRITE_CHUNK));
                match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Poll::Ready(Err(self.write_error(&e))),
                    None => return Poll::Ready(Err(WriteError::ClosedStream)),
                }
            }
            let step = self.send.capacity().min(chunk.len());
            let part = chunk.split_to(step);
            if let Err(e) = self.send.send_data(part, false) {
                return Poll::Ready(Err(self.write_error(&e)));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `chunk` whole, without copying it.
    pub async fn write_chunk(&mut self, mut chunk: Bytes) -> Result<(), WriteError> {
        poll_fn(|cx| self.poll_send(cx, &mut chunk)).await
    }

    /// Ends the stream cleanly once what was written is sent.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        self.send.send_data(Bytes::new(), true).map_err(|_| ClosedStream)
    }

    /// Abandons the stream (RST_STREAM with `code`): the peer reads an error, not an end.
    pub fn reset(&mut self, code: VarInt) -> Result<(), ClosedStream> {
        let code = u32::try_from(code.into_inner()).unwrap_or(u32::MAX);
        self.send.send_reset(Reason::from(code));
        Ok(())
    }

    fn write_error(&self, e: &h2::Error) -> WriteError {
        match e.reason() {
            Some(reason) if !e.is_go_away() && !e.is_io() => WriteError::Stopped(VarInt::from_u32(reason.into())),
            _ => WriteError::ConnectionLost(self.state.lost()),
        }
    }
}

impl AsyncWrite for TcpSend {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send.capacity() == 0 {
            this.send.reserve_capacity(buf.len().min(WRITE_CHUNK));
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(this.write_error(&e).into())),
                None => return Poll::Ready(Err(WriteError::ClosedStream.into())),
            }
        }
        let step = this.send.capacity().min(buf.len());
        if step == 0 {
            // Capacity came and went (another write took it): ask again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match this.send.send_data(Bytes::copy_from_slice(&buf[..step]), false) {
            Ok(()) => Poll::Ready(Ok(step)),
            Err(e) => Poll::Ready(Err(this.write_error(&e).into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes what is queued; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish().map_err(io::Error::from))
    }
}

/// Where the receiving half is.
#[derive(Debug)]
enum Body {
    /// The stream's opener waits for the response that carries the peer's half.
    Waiting(h2::client::ResponseFuture),
    /// Reading the body.
    Open(h2::RecvStream),
    /// Stopped, or ended.
    Done,
}

/// The receiving half: a response body (the stream's opener) or a request body.
#[derive(Debug)]
pub struct TcpRecv {
    body: Body,
    /// The rest of the chunk last taken from h2.
    pending: Bytes,
    state: Arc<State>,
    /// Held while the stream lives: the count of streams the peer may have open.
    _permit: Option<OwnedSemaphorePermit>,
}

impl TcpRecv {
    pub(super) fn waiting(response: h2::client::ResponseFuture, state: Arc<State>) -> Self {
        Self { body: Body::Waiting(response), pending: Bytes::new(), state, _permit: None }
    }

    pub(super) fn open(body: h2::RecvStream, state: Arc<State>, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { body: Body::Open(body), pending: Bytes::new(), state, _permit: permit }
    }

    fn read_error(&self, e: &h2::Error) -> ReadError {
        match e.reason() {
            Some(reason) if !e.is_go_away() && !e.is_io() => ReadError::Reset(VarInt::from_u32(reason.into())),
            _ => ReadError::ConnectionLost(self.state.lost()),
        }
    }

    /// The next chunk, `None` at the end of the stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ReadError>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            match &mut self.body {
                Body::Waiting(response) => match ready!(Pin::new(response).poll(cx)) {
                    Ok(response) if response.status() == http::StatusCode::OK => {
                        self.body = Body::Open(response.into_body());
                    }
                    Ok(_) => {
                        self.body = Body::Done;
                        return Poll::Ready(Err(ReadError::Reset(VarInt::from_u32(Reason::REFUSED_STREAM.into()))));
                    }
                    Err(e) => {
                        let error = self.read_error(&e);
                        self.body = Body::Done;
                        return Poll::Ready(Err(error));
                    }
                },
                Body::Open(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(chunk)) => {
                        // The window is ours to give back: the chunk is out of h2's buffer.
                        let _ = body.flow_control().release_capacity(chunk.len());
                        if !chunk.is_empty() {
                            return Poll::Ready(Ok(Some(chunk)));
                        }
                    }
                    Some(Err(e)) => {
                        let error = self.read_error(&e);
                        self.body = Body::Done;
                        return Poll::Ready(Err(error));
                    }
                    None => {
                        self.body = Body::Done;
                        return Poll::Ready(Ok(None));
                    }
                },
                Body::Done => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Reads what is ready into `buf`: `None` at the stream's end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        let Some(mut chunk) = poll_fn(|cx| self.poll_chunk(cx)).await? else {
            return Ok(None);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk.split_to(n));
        self.pending = chunk;
        Ok(Some(n))
    }

    /// The next chunk as it came: `None` at the stream's end.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Fills `buf`, or fails if the stream ends first.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadExactError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None => return Err(ReadExactError::FinishedEarly(filled)),
            }
        }
        Ok(())
    }

    /// Reads the chunks that are ready (at least one) into `bufs`.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, ReadError> {
        let Some(first) = bufs.first_mut() else {
            return Ok(Some(0));
        };
        let Some(chunk) = poll_fn(|cx| self.poll_chunk(cx)).await? else {
            return Ok(None);
        };
        *first = chunk;
        let mut n = 1;
        while n < bufs.len() {
            match poll_fn(|cx| Poll::Ready(self.poll_chunk(cx))).await {
                Poll::Ready(Ok(Some(chunk))) => {
                    bufs[n] = chunk;
                    n += 1;
                }
                // An end or an error shows on the next call.
                _ => break,
            }
        }
        Ok(Some(n))
    }

    /// Stops reading: what arrives is dropped, and the stream is reset once both halves are gone.
    pub fn stop(&mut self, _code: VarInt) -> Result<(), ClosedStream> {
        self.pending = Bytes::new();
        self.body = Body::Done;
        Ok(())
    }
}

impl AsyncRead for TcpRecv {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(this.poll_chunk(cx)) {
            Ok(Some(mut chunk)) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk.split_to(n));
                this.pending = chunk;
                Poll::Ready(Ok(()))
            }
            Ok(None) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }
}
