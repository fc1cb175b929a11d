//! Length-prefixed framing. See the [crate docs](crate) for the layout.
//!
//! Decoding distinguishes "need more bytes" (`Ok(None)`) from "this is not a valid frame"
//! (`Err`); it never panics, and never allocates more than [`MAX_FRAME_LEN`] for one frame.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Why bytes could not be decoded into (or encoded as) a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix (or an encoded message) is over [`MAX_FRAME_LEN`].
    TooLong {
        /// The length claimed or needed.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix is zero; no message encodes to nothing.
    Empty,
    /// The body is not a valid message of the expected type.
    Malformed(String),
    /// The body held a valid message followed by extra bytes.
    TrailingBytes(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLong { len, max } => write!(f, "frame of {len} bytes exceeds the limit of {max} bytes"),
            Self::Empty => f.write_str("empty frame"),
            Self::Malformed(why) => write!(f, "malformed frame body: {why}"),
            Self::TrailingBytes(n) => write!(f, "frame body has {n} trailing bytes after the message"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A type that may travel in a frame. Implemented only for the protocol's own messages.
pub trait WireMessage: Serialize + DeserializeOwned {}

fn config() -> impl bincode::config::Config {
    // The limit bounds every allocation bincode makes while decoding (a string that claims
    // 2^60 bytes fails here instead of aborting the process).
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Reads the length prefix. Errors when the length is zero or over [`MAX_FRAME_LEN`].
pub fn body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len, max: MAX_FRAME_LEN });
    }
    Ok(len)
}

/// Decodes one message from a whole frame body (without its length prefix).
pub fn decode_body<T: WireMessage>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, used) =
        bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|e| FrameError::Malformed(e.to_string()))?;
    match body.len().checked_sub(used) {
        Some(0) => Ok(msg),
        Some(extra) => Err(FrameError::TrailingBytes(extra)),
        None => Err(FrameError::Malformed("decoder overran the body".into())),
    }
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(Some((message, bytes_consumed)))`, `Ok(None)` when `buf` holds only part of a
/// frame (read more and call again), or an error when the bytes can never become a valid frame.
pub fn decode<T: WireMessage>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = body_len(*header)?;
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    let msg = decode_body(body)?;
    Ok(Some((msg, FRAME_HEADER_LEN + len)))
}

/// Appends `msg` as one frame (length prefix and body) to `out`.
///
/// Fails, leaving `out` untouched, when the body would exceed [`MAX_FRAME_LEN`].
pub fn encode<T: WireMessage>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let body = bincode::serde::encode_to_vec(msg, config()).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let too_long = FrameError::TooLong { len: body.len(), max: MAX_FRAME_LEN };
    if body.len() > MAX_FRAME_LEN {
        return Err(too_long);
    }
    let len = u32::try_from(body.len()).map_err(|_| too_long)?;
    out.reserve(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Encodes `msg` as one frame into a new buffer.
pub fn encode_to_vec<T: WireMessage>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// Reads the protocol version at the front of a [`crate::Hello`] body without decoding the
/// rest, so that a peer speaking another version gets a precise answer instead of
/// "malformed".
pub fn peek_protocol_version(hello_body: &[u8]) -> Result<u32, FrameError> {
    bincode::serde::decode_from_slice::<u32, _>(hello_body, config())
        .map(|(v, _)| v)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}
