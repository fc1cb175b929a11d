//! Who a peer is, for limits: the address prefix one host (or one NAT) controls. Counting by
//! exact address would let an IPv6 host rotate through its /64 and count as billions of peers.

use std::net::{IpAddr, Ipv6Addr};

/// The prefix of `ip` one host controls: the address for IPv4 (and IPv4-mapped IPv6), the /64
/// for IPv6.
pub(crate) fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn ipv4_is_itself_and_ipv6_is_its_slash_64() {
        assert_eq!(prefix(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(prefix(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(prefix(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(prefix(ip("2001:db8:1:2::1")), prefix(ip("2001:db8:1:3::1")));
    }
}
