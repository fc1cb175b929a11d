//! UDP over the tunnel, sans-IO: the QUIC datagram layout and the packet framing of flow
//! streams. Every decoder here returns an error (never panics) on short or bad input.
//!
//! # Flows
//! A *flow* carries the packets between one user address and one service (or forward target).
//! It opens like a TCP data stream: the opener opens a bidi stream and sends
//! [`crate::OpenStream::UdpExpose`] (server → client) or [`crate::OpenStream::UdpConnect`]
//! (client → server); the acceptor sets up its socket and answers with a
//! [`crate::OpenResult`]. The stream stays open for the life of the flow, and its end (from
//! either side: idle timeout, shutdown, a lost socket) ends the flow on both.
//!
//! The **flow id is the QUIC stream id of that stream** (RFC 9000 §2.1). Stream ids are unique
//! within a connection and never reused, so a datagram of an ended flow that arrives late can
//! never be taken for another flow's: it is dropped as an unknown flow. A new connection starts
//! new tables on both ends.
//!
//! # Datagrams
//! ```text
//! +--------------------+-------------------------------------+
//! | flow id: varint    | payload: the rest of the datagram    |
//! +--------------------+-------------------------------------+
//! ```
//! `varint` is QUIC's variable-length integer (RFC 9000 §16): the top two bits of the first
//! byte give the length (1, 2, 4 or 8 bytes), the rest is the value, big-endian. An empty
//! payload is a valid (empty) UDP packet; an empty datagram is malformed.
//!
//! # Packets on the flow stream
//! After the header (opener) and the answer (acceptor), each side may send packets on the flow
//! stream as
//! ```text
//! +---------------------+----------------+
//! | len: u16 big-endian | payload: len B |
//! +---------------------+----------------+
//! ```
//! This path is reliable and ordered. It carries:
//! - packets the opener sends before it has the acceptor's answer (the first packet of a flow
//!   is never lost to setup);
//! - packets larger than the connection's current datagram limit (about 1.2–1.4 KB on a
//!   1,500-byte path). Dropping them would break programs that send large packets (DNS with
//!   EDNS, 8 KiB game or media frames) which work directly over a LAN or loopback, where the
//!   kernel fragments them; so they are carried, at the cost of ordering behind other large
//!   packets of the same flow.
//!
//! Everything else travels as datagrams.

use bytes::{BufMut, BytesMut};

/// Largest value a QUIC varint can hold.
pub const MAX_VARINT: u64 = (1 << 62) - 1;

/// Longest encoded varint, in bytes.
pub const MAX_VARINT_LEN: usize = 8;

/// Size of the length in front of a packet on a flow stream.
pub const PACKET_HEADER_LEN: usize = 2;

/// Largest packet a flow carries: every UDP payload fits (65,507 bytes over IPv4).
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;

/// Why a datagram could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    /// The datagram has no bytes at all.
    Empty,
    /// The flow id's varint claims more bytes than the datagram has.
    TruncatedFlowId,
}

impl std::fmt::Display for DatagramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty datagram",
            Self::TruncatedFlowId => "datagram shorter than its flow id",
        })
    }
}

impl std::error::Error for DatagramError {}

/// A value that does not fit where it must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// Over [`MAX_VARINT`].
    VarIntTooLarge(u64),
    /// A packet over [`MAX_PACKET_LEN`].
    PacketTooLarge(usize),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::VarIntTooLarge(v) => write!(f, "{v} does not fit a QUIC varint"),
            Self::PacketTooLarge(n) => write!(f, "packet of {n} bytes is larger than a UDP packet can be"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// How many bytes `value` takes as a varint, or `None` above [`MAX_VARINT`].
pub fn varint_len(value: u64) -> Option<usize> {
    match value {
        0..=0x3f => Some(1),
        0x40..=0x3fff => Some(2),
        0x4000..=0x3fff_ffff => Some(4),
        0x4000_0000..=MAX_VARINT => Some(8),
        _ => None,
    }
}

/// Appends `value` as a varint.
pub fn encode_varint(value: u64, out: &mut impl BufMut) -> Result<(), EncodeError> {
    match varint_len(value) {
        Some(1) => out.put_u8(value as u8),
        Some(2) => out.put_u16(value as u16 | 0x4000),
        Some(4) => out.put_u32(value as u32 | 0x8000_0000),
        Some(_) => out.put_u64(value | 0xc000_0000_0000_0000),
        None => return Err(EncodeError::VarIntTooLarge(value)),
    }
    Ok(())
}

/// Reads a varint from the front of `buf`: the value and the bytes it took, or `None` when
/// `buf` is shorter than the varint (or empty).
pub fn decode_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for b in bytes.iter().skip(1) {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, len))
}

/// A new datagram for `flow`: its header, with room reserved for `payload_len` more bytes.
/// Append the payload, freeze and send.
pub fn datagram_with_header(flow: u64, payload_len: usize) -> Result<BytesMut, EncodeError> {
    let mut out = BytesMut::with_capacity(MAX_VARINT_LEN + payload_len);
    encode_varint(flow, &mut out)?;
    Ok(out)
}

/// Splits a received datagram into its flow id and payload.
pub fn decode_datagram(datagram: &[u8]) -> Result<(u64, &[u8]), DatagramError> {
    if datagram.is_empty() {
        return Err(DatagramError::Empty);
    }
    let (flow, used) = decode_varint(datagram).ok_or(DatagramError::TruncatedFlowId)?;
    let payload = datagram.get(used..).ok_or(DatagramError::TruncatedFlowId)?;
    Ok((flow, payload))
}

/// The length prefix of a packet of `len` bytes on a flow stream.
pub fn packet_header(len: usize) -> Result<[u8; PACKET_HEADER_LEN], EncodeError> {
    u16::try_from(len).map(u16::to_be_bytes).map_err(|_| EncodeError::PacketTooLarge(len))
}

/// The payload length a packet header announces.
pub fn packet_len(header: [u8; PACKET_HEADER_LEN]) -> usize {
    usize::from(u16::from_be_bytes(header))
}

/// Reads one packet from the front of `buf`: the payload and the bytes consumed, or `None`
/// when `buf` holds only part of it (read more and call again). Every length is valid.
pub fn decode_packet(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (header, rest) = buf.split_first_chunk::<PACKET_HEADER_LEN>()?;
    let len = packet_len(*header);
    let payload = rest.get(..len)?;
    Some((payload, PACKET_HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_boundary() {
        for v in [0, 1, 63, 64, 16_383, 16_384, 0x3fff_ffff, 0x4000_0000, MAX_VARINT] {
            let mut out = Vec::new();
            encode_varint(v, &mut out).unwrap();
            assert_eq!(Some(out.len()), varint_len(v));
            assert_eq!(decode_varint(&out), Some((v, out.len())), "{v}");
        }
        assert_eq!(encode_varint(MAX_VARINT + 1, &mut Vec::new()), Err(EncodeError::VarIntTooLarge(MAX_VARINT + 1)));
    }

    #[test]
    fn varints_match_rfc_9000_examples() {
        // RFC 9000 appendix A.1.
        assert_eq!(
            decode_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(decode_varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(decode_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode_varint(&[0x25]), Some((37, 1)));
        assert_eq!(decode_varint(&[0x40, 0x25]), Some((37, 2)));
    }

    #[test]
    fn datagrams_split_into_flow_and_payload() {
        let mut d = datagram_with_header(1_000, 3).unwrap();
        d.extend_from_slice(b"abc");
        assert_eq!(decode_datagram(&d), Ok((1_000, &b"abc"[..])));
        // A flow id alone is an empty UDP packet, which is legal.
        assert_eq!(decode_datagram(&[5]), Ok((5, &b""[..])));
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        assert_eq!(decode_datagram(&[]), Err(DatagramError::Empty));
        assert_eq!(decode_datagram(&[0x40]), Err(DatagramError::TruncatedFlowId));
        assert_eq!(decode_datagram(&[0xc0, 1, 2, 3, 4, 5, 6]), Err(DatagramError::TruncatedFlowId));
    }

    #[test]
    fn every_short_prefix_of_a_datagram_decodes_without_panic() {
        let mut d = datagram_with_header(MAX_VARINT, 2).unwrap();
        d.extend_from_slice(b"xy");
        for n in 0..d.len() {
            let _ = decode_datagram(&d[..n]);
        }
        for first in 0..=255u8 {
            let _ = decode_datagram(&[first]);
            let _ = decode_packet(&[first]);
        }
    }

    #[test]
    fn packets_frame_and_unframe() {
        let mut buf = packet_header(3).unwrap().to_vec();
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&packet_header(0).unwrap());
        assert_eq!(decode_packet(&buf), Some((&b"abc"[..], 5)));
        assert_eq!(decode_packet(&buf[5..]), Some((&b""[..], 2)));
        assert_eq!(decode_packet(&buf[..4]), None);
        assert_eq!(packet_header(MAX_PACKET_LEN + 1), Err(EncodeError::PacketTooLarge(MAX_PACKET_LEN + 1)));
        assert_eq!(packet_len(packet_header(MAX_PACKET_LEN).unwrap()), MAX_PACKET_LEN);
    }
}
