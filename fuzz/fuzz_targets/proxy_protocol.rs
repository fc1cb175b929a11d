//! The PROXY protocol header the client writes to a service, for any pair of addresses (IPv4,
//! IPv6, mapped, unspecified, mixed families): building it never panics, and the header reads
//! back (with ppp) naming the user's address and port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wmproxy_config::ProxyProtocol;

/// An address from 19 bytes: a family bit, 16 address bytes, a port.
fn address(bytes: &[u8; 19]) -> SocketAddr {
    let octets: [u8; 16] = bytes[1..17].try_into().unwrap_or_default();
    let ip = if bytes[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, u16::from_be_bytes([bytes[17], bytes[18]]))
}

/// `a` as IPv6 (IPv4-mapped), for comparing across families.
fn v6(a: SocketAddr) -> (Ipv6Addr, u16) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    (ip, a.port())
}

fuzz_target!(|data: &[u8]| {
    let (Some(peer), Some(destination)) =
        (data.first_chunk::<19>(), data.get(19..).and_then(|d| d.first_chunk::<19>()))
    else {
        return;
    };
    let (peer, destination) = (address(peer), address(destination));
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let Ok(header) = wmproxy_client::fuzzing::proxy_header(version, peer, destination) else { continue };
        let source = match version {
            ProxyProtocol::V1 => {
                let text = std::str::from_utf8(&header).expect("a v1 header is text");
                match ppp::v1::Header::try_from(text).expect("a v1 header parses").addresses {
                    ppp::v1::Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                    ppp::v1::Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                    ppp::v1::Addresses::Unknown => panic!("a v1 header without addresses"),
                }
            }
            ProxyProtocol::V2 => match ppp::v2::Header::try_from(&header[..]).expect("a v2 header parses").addresses {
                ppp::v2::Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                ppp::v2::Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                other => panic!("a v2 header without IP addresses: {other:?}"),
            },
        };
        assert_eq!(v6(source), v6(peer), "{version:?} header names the user");
    }
});
