//! Frames on async streams: exactly one frame per call, never reading past its end, so raw
//! payload that follows an [`wmproxy_wire::OpenResult`] stays in the stream for the relay.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use wmproxy_wire::{FRAME_HEADER_LEN, FrameError, WireMessage, frame};

use crate::Side;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream ended cleanly before a frame started.
    #[error("stream closed by the peer")]
    Closed,
    /// The stream ended, or failed, in the middle of a frame.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl StreamError {
    /// Always the tunnel's: the peer closed, the stream broke, or the peer sent garbage.
    pub fn side(&self) -> Side {
        Side::Tunnel
    }
}

/// Reads one frame and decodes it as `T`. Allocates at most
/// [`wmproxy_wire::MAX_FRAME_LEN`] bytes, and only once the header has passed the cap.
pub async fn read_frame<T, R>(reader: &mut R) -> Result<T, StreamError>
where
    T: WireMessage,
    R: AsyncRead + Unpin,
{
    let body = read_frame_body(reader).await?;
    Ok(frame::decode_body(&body)?)
}

/// Reads one frame's body without decoding it (used where the server must peek at the
/// protocol version before choosing how to decode).
pub async fn read_frame_body<R>(reader: &mut R) -> Result<Vec<u8>, StreamError>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = reader.read(&mut header).await?;
    if first == 0 {
        return Err(StreamError::Closed);
    }
    if first < FRAME_HEADER_LEN {
        reader.read_exact(&mut header[first..]).await?;
    }
    let len = frame::body_len(header)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(body)
}

/// Encodes `msg` and writes it as one frame.
pub async fn write_frame<T, W>(writer: &mut W, msg: &T) -> Result<(), StreamError>
where
    T: WireMessage,
    W: AsyncWrite + Unpin,
{
    let bytes = frame::encode_to_vec(msg)?;
    writer.write_all(&bytes).await?;
    Ok(())
}
