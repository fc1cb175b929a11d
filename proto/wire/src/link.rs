//! The TCP transport's link stream, sans-IO. A tunnel over TLS on TCP has no QUIC datagrams
//! and no CONNECTION_CLOSE, so one stream, opened first by the server, carries both: UDP
//! datagrams (which become reliable and ordered on this transport) and the close code and
//! reason. Every decoder here returns an error (never panics) on bad input, and no length is
//! accepted over its cap.
//!
//! ```text
//! +------------+-----------------------+-----------------------------+
//! | kind: u8   | len: u16 big-endian   | body: `len` bytes           |
//! +------------+-----------------------+-----------------------------+
//! kind 0 (datagram): body = the datagram, as a QUIC datagram would carry it
//! kind 1 (close):    body = code: u32 big-endian, then the reason (UTF-8, at most
//!                    MAX_CLOSE_REASON bytes)
//! ```

/// Bytes before a link frame's body.
pub const LINK_HEADER_LEN: usize = 3;

/// The largest datagram a link frame carries.
pub const MAX_LINK_DATAGRAM: usize = u16::MAX as usize;

/// The longest close reason sent; longer ones are cut (at a character boundary).
pub const MAX_CLOSE_REASON: usize = 1024;

const KIND_DATAGRAM: u8 = 0;
const KIND_CLOSE: u8 = 1;

/// One frame of the link stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFrame<'a> {
    /// A datagram.
    Datagram(&'a [u8]),
    /// The sender closes the connection with `code` and `reason`.
    Close {
        /// The close code ([`crate::close_code`]).
        code: u32,
        /// Why, for people; not necessarily UTF-8 when it comes from a peer.
        reason: &'a [u8],
    },
}

/// Why link bytes cannot be decoded (or a datagram encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// A frame kind this version does not know.
    #[error("unknown link frame kind {0}")]
    UnknownKind(u8),
    /// A close frame too short for its code, or with a reason over the cap.
    #[error("malformed close frame of {0} bytes")]
    BadClose(usize),
    /// A datagram over [`MAX_LINK_DATAGRAM`].
    #[error("datagram of {0} bytes is over the link's limit of {MAX_LINK_DATAGRAM}")]
    TooLong(usize),
}

/// Appends a datagram frame carrying `datagram` to `out`.
pub fn encode_datagram(out: &mut Vec<u8>, datagram: &[u8]) -> Result<(), LinkError> {
    let len = u16::try_from(datagram.len()).map_err(|_| LinkError::TooLong(datagram.len()))?;
    out.push(KIND_DATAGRAM);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Appends a close frame to `out`; a reason over [`MAX_CLOSE_REASON`] bytes is cut.
pub fn encode_close(out: &mut Vec<u8>, code: u32, reason: &str) {
    let mut cut = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    // At most 4 + 1024 bytes: fits the u16.
    let len = (4 + reason.len()) as u16;
    out.push(KIND_CLOSE);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Decodes the frame at the start of `buf`: the frame and how many bytes it took, or `None`
/// if `buf` does not hold a whole frame yet.
pub fn decode(buf: &[u8]) -> Result<Option<(LinkFrame<'_>, usize)>, LinkError> {
    let Some((&[kind, hi, lo], rest)) = buf.split_first_chunk::<LINK_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if kind != KIND_DATAGRAM && kind != KIND_CLOSE {
        return Err(LinkError::UnknownKind(kind));
    }
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    let frame = match kind {
        KIND_DATAGRAM => LinkFrame::Datagram(body),
        _ => {
            let Some((code, reason)) = body.split_first_chunk::<4>() else {
                return Err(LinkError::BadClose(len));
            };
            if reason.len() > MAX_CLOSE_REASON {
                return Err(LinkError::BadClose(len));
            }
            LinkFrame::Close { code: u32::from_be_bytes(*code), reason }
        }
    };
    Ok(Some((frame, LINK_HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_input_asks_for_more() {
        let mut out = Vec::new();
        encode_datagram(&mut out, b"hello").unwrap_or_else(|e| panic!("{e}"));
        encode_close(&mut out, 7, "bye");
        for cut in 0..8 {
            assert_eq!(decode(&out[..cut]), Ok(None), "cut at {cut}");
        }
        let Ok(Some((first, used))) = decode(&out) else { panic!("no first frame") };
        assert_eq!((first, used), (LinkFrame::Datagram(b"hello"), 8));
        assert_eq!(decode(&out[used..]), Ok(Some((LinkFrame::Close { code: 7, reason: b"bye" }, 10))));
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(decode(&[9, 0, 0]), Err(LinkError::UnknownKind(9)));
        assert_eq!(decode(&[1, 0, 2, 0, 0]), Err(LinkError::BadClose(2)));
        let long = vec![0u8; MAX_LINK_DATAGRAM + 1];
        assert_eq!(encode_datagram(&mut Vec::new(), &long), Err(LinkError::TooLong(long.len())));
        let mut out = Vec::new();
        encode_close(&mut out, 1, &"é".repeat(MAX_CLOSE_REASON));
        let Ok(Some((LinkFrame::Close { reason, .. }, _))) = decode(&out) else { panic!("no close") };
        assert!(reason.len() <= MAX_CLOSE_REASON && std::str::from_utf8(reason).is_ok());
    }
}
