//! Which targets the server may dial for a client's local forwards.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// The `[egress]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressFile {
    /// Networks that may be dialed even when a built-in rule denies them (e.g. `127.0.0.1/32`).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Networks that are never dialed; beats `allow`.
    #[serde(default)]
    pub deny: Vec<IpNet>,
}

/// The egress decision, in order: `deny` (explicit) → refuse; `allow` (explicit) → permit;
/// loopback, link-local (cloud metadata lives there), unspecified, multicast or broadcast →
/// refuse; anything else → permit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl From<EgressFile> for EgressPolicy {
    fn from(f: EgressFile) -> Self {
        Self { allow: f.allow, deny: f.deny }
    }
}

impl EgressPolicy {
    /// Whether the server may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !denied_by_default(ip)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn denied_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_loopback_and_link_local_only() {
        let p = EgressPolicy::default();
        for bad in
            ["127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1"]
        {
            assert!(!p.permits(ip(bad)), "{bad}");
        }
        for good in ["192.0.2.1", "10.1.2.3", "2001:db8::1"] {
            assert!(p.permits(ip(good)), "{good}");
        }
    }

    #[test]
    fn explicit_allow_opens_and_deny_beats_allow() {
        let p = EgressPolicy::from(EgressFile {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.2/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
        });
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("10.0.0.1")));
    }
}
