//! Which targets the server may dial for a client's local forwards and proxies: rules on the
//! name and port (checked before resolution) and on every resolved address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ports::PortRange;

/// The `[egress]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressFile {
    /// Networks that may be dialed even when a built-in rule denies them (`10.0.0.0/8`; a bare
    /// address such as `127.0.0.1` is that one address, /32 or /128).
    #[serde(default, deserialize_with = "networks")]
    pub allow: Vec<IpNet>,
    /// Networks that are never dialed; beats `allow`. Written as `allow` is.
    #[serde(default, deserialize_with = "networks")]
    pub deny: Vec<IpNet>,
    /// If set, target names must match one of these (`example.com` exactly, `*.example.com`
    /// any name below it). IP-literal targets are judged by the address rules only.
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Target names never dialed (same patterns); beats `allow_domains`.
    #[serde(default)]
    pub deny_domains: Vec<String>,
    /// If set, only these ports may be dialed.
    #[serde(default)]
    pub allow_ports: Vec<PortRange>,
    /// Ports never dialed; beats `allow_ports`.
    #[serde(default)]
    pub deny_ports: Vec<PortRange>,
}

/// A list of networks in CIDR form, where a bare address is a network of that one address.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let written = Vec::<String>::deserialize(d)?;
    written
        .iter()
        .map(|text| {
            text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from)).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a network (\"10.0.0.0/8\") or an address (\"192.168.1.5\")"
                ))
            })
        })
        .collect()
}

/// Which end dials under a policy: the defaults differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialer {
    /// The server's: any authenticated client can make it dial, so by default it reaches the
    /// public internet only.
    #[default]
    Server,
    /// A client's: reaching its own private network is its purpose, so only loopback,
    /// link-local and its own addresses are refused by default.
    Client,
}

/// The egress decision, in order: `deny` (explicit) → refuse; `allow` (explicit) → permit;
/// refused by default ([`Dialer`]) → refuse; anything else → permit.
///
/// Refused by default on the server: loopback, private (RFC 1918), CGNAT (100.64.0.0/10),
/// unique-local (fc00::/7), site-local (fec0::/10), link-local (cloud metadata lives there),
/// unspecified and "this network" (0.0.0.0/8), multicast, broadcast, the server's own
/// addresses, and every IPv6 form that embeds an IPv4 address (IPv4-compatible, NAT64
/// 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32). An IPv4-mapped address
/// (`::ffff:a.b.c.d`) is the IPv4 address it carries, and is judged as that.
///
/// Refused by default on a client: loopback, link-local, unspecified, multicast, broadcast
/// and its own addresses, also when an IPv6 form embeds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EgressPolicy {
    dialer: Dialer,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    allow_ports: Vec<PortRange>,
    deny_ports: Vec<PortRange>,
}

impl EgressPolicy {
    /// The server's policy from its `[egress]`.
    pub fn server(file: EgressFile) -> Self {
        Self::of(Dialer::Server, file)
    }

    /// A client's policy from its `[egress]`.
    pub fn client(file: EgressFile) -> Self {
        Self::of(Dialer::Client, file)
    }

    fn of(dialer: Dialer, f: EgressFile) -> Self {
        let lower = |v: Vec<String>| v.into_iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect();
        Self {
            dialer,
            allow: f.allow,
            deny: f.deny,
            allow_domains: lower(f.allow_domains),
            deny_domains: lower(f.deny_domains),
            allow_ports: f.allow_ports,
            deny_ports: f.deny_ports,
        }
    }

    /// The `allow` and `deny` networks.
    pub fn networks(&self) -> (&[IpNet], &[IpNet]) {
        (&self.allow, &self.deny)
    }

    /// The `allow_domains` and `deny_domains` patterns (lower-case).
    pub fn domains(&self) -> (&[String], &[String]) {
        (&self.allow_domains, &self.deny_domains)
    }

    /// The `allow_ports` and `deny_ports` ranges.
    pub fn ports(&self) -> (&[PortRange], &[PortRange]) {
        (&self.allow_ports, &self.deny_ports)
    }

    /// Whether `host:port` may be dialed at all, before resolution: the port rules, and the
    /// domain rules when `host` is a name. With `allow_domains` set, an IP literal passes only
    /// if an `allow` network holds it. The resolved addresses still go through
    /// [`Self::permits`].
    pub fn permits_target(&self, host: &str, port: u16) -> bool {
        if self.deny_ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        if !self.allow_ports.is_empty() && !self.allow_ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ip = canonical(ip);
            return self.allow_domains.is_empty() || self.allow.iter().any(|n| n.contains(&ip));
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if self.deny_domains.iter().any(|p| domain_matches(p, &name)) {
            return false;
        }
        self.allow_domains.is_empty() || self.allow_domains.iter().any(|p| domain_matches(p, &name))
    }

    /// Whether this end may connect to `ip`; `own` says whether an address is one of this
    /// machine's (`wmproxy_tunnel::dial::is_own_address`, or a fixed list in tests).
    pub fn permits(&self, ip: IpAddr, own: impl Fn(IpAddr) -> bool) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        let refused = match self.dialer {
            Dialer::Server => server_refuses(ip),
            Dialer::Client => client_refuses(ip),
        };
        !refused && !own(ip)
    }
}

/// `example.com` matches exactly; `*.example.com` matches any name below it (not itself).
/// Both are expected lower-case.
pub fn domain_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.strip_suffix(suffix).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == name,
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry (the system connects to that).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Networks no server dials by default, beyond loopback, link-local, unspecified, multicast
/// and broadcast.
static SERVER_REFUSED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fc00::/7",
        "fec0::/10",
        // IPv6 forms that embed an IPv4 address: IPv4-compatible, NAT64 (well-known and local-use),
        // 6to4, Teredo.
        "::/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
        "2001::/32",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
});

fn server_refuses(ip: IpAddr) -> bool {
    client_refuses(ip) || SERVER_REFUSED.iter().any(|n| n.contains(&ip))
}

fn client_refuses(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.octets()[0] == 0 || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || embedded_v4(v6).is_some_and(|v4| client_refuses(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 address an IPv6 address carries in the forms that embed one (IPv4-compatible,
/// NAT64, 6to4), if any.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = |a: u16, b: u16| Ipv4Addr::from((u32::from(a) << 16) | u32::from(b));
    match s {
        [0, 0, 0, 0, 0, 0, a, b] if (a, b) != (0, 0) && (a, b) != (0, 1) => Some(low(a, b)),
        [0x64, 0xff9b, 0, 0, 0, 0, a, b] => Some(low(a, b)),
        [0x2002, a, b, ..] => Some(low(a, b)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn none(_: IpAddr) -> bool {
        false
    }

    #[test]
    fn the_server_reaches_only_the_public_internet_by_default() {
        let p = EgressPolicy::server(EgressFile::default());
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "169.254.169.254",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "ff02::1",
            // IPv4 in IPv6: mapped (judged as the IPv4), compatible, NAT64, 6to4, Teredo.
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::7f00:1",
            "::8.8.8.8",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:808:808::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!p.permits(ip(bad), none), "{bad}");
        }
        for good in
            ["192.0.2.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1", "2606:4700::1111", "::ffff:8.8.8.8"]
        {
            assert!(p.permits(ip(good), none), "{good}");
        }
        // The server's own addresses, whatever they are.
        let own = |a: IpAddr| a == ip("203.0.113.7");
        assert!(!p.permits(ip("203.0.113.7"), own));
        assert!(p.permits(ip("203.0.113.8"), own));
    }

    #[test]
    fn a_client_reaches_its_private_network_but_not_itself() {
        let p = EgressPolicy::client(EgressFile::default());
        for good in ["10.1.2.3", "192.168.1.1", "100.64.0.1", "fd12::1", "8.8.8.8", "::ffff:10.0.0.1"] {
            assert!(p.permits(ip(good), none), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
            "::7f00:1",
            "64:ff9b::7f00:1",
            "2002:a9fe:a9fe::1",
            "224.0.0.1",
        ] {
            assert!(!p.permits(ip(bad), none), "{bad}");
        }
        let own = |a: IpAddr| a == ip("192.168.1.10");
        assert!(!p.permits(ip("192.168.1.10"), own));
    }

    #[test]
    fn explicit_allow_opens_and_deny_beats_allow() {
        let p = EgressPolicy::server(EgressFile {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "10.1.0.0/16".parse().unwrap()],
            deny: vec!["127.0.0.2/32".parse().unwrap(), "10.1.2.0/24".parse().unwrap()],
            ..EgressFile::default()
        });
        assert!(p.permits(ip("127.0.0.1"), |_| true), "allow beats the own-address rule too");
        assert!(p.permits(ip("::ffff:127.0.0.1"), none));
        assert!(p.permits(ip("10.1.3.4"), none));
        assert!(!p.permits(ip("127.0.0.2"), none));
        assert!(!p.permits(ip("10.1.2.3"), none));
    }

    #[test]
    fn names_and_ports_are_checked_before_resolution() {
        let p = EgressPolicy::server(EgressFile {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            allow_domains: vec!["example.com".into(), "*.Internal.Example".into()],
            deny_domains: vec!["bad.internal.example".into()],
            allow_ports: vec!["80".parse().unwrap(), "8000-9000".parse().unwrap()],
            deny_ports: vec!["8080".parse().unwrap()],
            ..EgressFile::default()
        });
        assert!(p.permits_target("example.com", 80));
        assert!(p.permits_target("EXAMPLE.com.", 8001), "case and a trailing dot do not matter");
        assert!(p.permits_target("db.internal.example", 80));
        assert!(!p.permits_target("internal.example", 80), "`*.` does not match the bare suffix");
        assert!(!p.permits_target("evilinternal.example", 80));
        assert!(!p.permits_target("bad.internal.example", 80), "deny beats allow");
        assert!(!p.permits_target("other.org", 80), "not in allow_domains");
        assert!(!p.permits_target("example.com", 8080), "denied port");
        assert!(!p.permits_target("example.com", 443), "port not allowed");
        assert!(p.permits_target("192.0.2.1", 80), "an IP literal an address rule allows");
        assert!(!p.permits_target("198.51.100.1", 80), "with allow_domains, other IP literals are refused");
        assert!(!p.permits_target("[2001:db8::1]", 80));
        assert!(EgressPolicy::server(EgressFile::default()).permits_target("anything.example", 1));
        assert!(EgressPolicy::server(EgressFile::default()).permits_target("198.51.100.1", 1));
    }
}
