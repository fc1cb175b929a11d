//! The SOCKS5 UDP request header (RFC 1928 §7), sans-IO: parsing never panics.
//!
//! ```text
//! +-----+------+------+----------+----------+----------+
//! | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
//! +-----+------+------+----------+----------+----------+
//! |  2  |  1   |  1   | Variable |    2     | Variable |
//! +-----+------+------+----------+----------+----------+
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};

/// A parsed datagram: the fragment number, the destination as `host:port`, the encoded
/// address (`ATYP DST.ADDR DST.PORT`, reused as the header of replies) and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// 0 for a whole datagram; anything else is a fragment (which we drop).
    pub frag: u8,
    /// `host:port` (IPv6 in brackets).
    pub target: String,
    /// `ATYP DST.ADDR DST.PORT` as received.
    pub address: &'a [u8],
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// Why a datagram is not a valid SOCKS5 UDP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SocksUdpError {
    /// Shorter than its header says.
    #[error("truncated SOCKS5 UDP header")]
    Truncated,
    /// An unknown address type.
    #[error("unknown address type {0}")]
    AddressType(u8),
    /// A domain that is empty or not UTF-8.
    #[error("bad domain name")]
    Domain,
}

/// Parses one datagram a SOCKS5 client sent to the relay.
pub fn parse(datagram: &[u8]) -> Result<Datagram<'_>, SocksUdpError> {
    let (&[_, _, frag, atyp], rest) = datagram.split_first_chunk::<4>().ok_or(SocksUdpError::Truncated)?;
    let addr_len = match atyp {
        1 => 4,
        4 => 16,
        3 => 1 + usize::from(*rest.first().ok_or(SocksUdpError::Truncated)?),
        other => return Err(SocksUdpError::AddressType(other)),
    };
    let addr = rest.get(..addr_len).ok_or(SocksUdpError::Truncated)?;
    let port = rest.get(addr_len..addr_len + 2).ok_or(SocksUdpError::Truncated)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    let host = match atyp {
        1 => Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
        4 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(addr);
            format!("[{}]", Ipv6Addr::from(octets))
        }
        _ => {
            let name = std::str::from_utf8(&addr[1..]).map_err(|_| SocksUdpError::Domain)?;
            if name.is_empty() {
                return Err(SocksUdpError::Domain);
            }
            name.to_owned()
        }
    };
    let header_end = 4 + addr_len + 2;
    Ok(Datagram {
        frag,
        target: format!("{host}:{port}"),
        address: &datagram[3..header_end],
        payload: &datagram[header_end..],
    })
}

/// The header of a reply from `address` (as [`Datagram::address`]): `RSV RSV FRAG=0`, then it.
pub fn reply_header(address: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + address.len());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(address);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_address_type() {
        let d = parse(&[0, 0, 0, 1, 127, 0, 0, 1, 0, 53, b'q']).unwrap();
        assert_eq!((d.frag, d.target.as_str(), d.payload), (0, "127.0.0.1:53", &b"q"[..]));
        assert_eq!(d.address, &[1, 127, 0, 0, 1, 0, 53]);
        let mut v6 = vec![0, 0, 2, 4];
        v6.extend_from_slice(&[0; 15]);
        v6.extend_from_slice(&[1, 0, 80]);
        assert_eq!(parse(&v6).unwrap().target, "[::1]:80");
        let d = parse(&[0, 0, 0, 3, 3, b'a', b'.', b'b', 1, 0, b'x', b'y']).unwrap();
        assert_eq!((d.target.as_str(), d.payload), ("a.b:256", &b"xy"[..]));
        assert_eq!(reply_header(d.address), [0, 0, 0, 3, 3, b'a', b'.', b'b', 1, 0]);
    }

    #[test]
    fn bad_datagrams_are_errors_never_panics() {
        assert_eq!(parse(&[0, 0, 0]), Err(SocksUdpError::Truncated));
        assert_eq!(parse(&[0, 0, 0, 9, 1, 2]), Err(SocksUdpError::AddressType(9)));
        assert_eq!(parse(&[0, 0, 0, 3, 0, 0, 80]), Err(SocksUdpError::Domain));
        assert_eq!(parse(&[0, 0, 0, 3, 5, b'a']), Err(SocksUdpError::Truncated));
        let full = [0, 0, 0, 3, 3, b'a', b'b', b'c', 0, 53, b'z'];
        for n in 0..full.len() {
            let _ = parse(&full[..n]);
        }
        for atyp in 0..=255u8 {
            let _ = parse(&[0, 0, 0, atyp, 200]);
        }
    }
}
