//! Which targets the server may dial for a client's local forwards and proxies: rules on the
//! name and port (checked before resolution) and on every resolved address.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ports::PortRange;

/// The `[egress]` table as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressFile {
    /// Networks that may be dialed even when a built-in rule denies them (e.g. `127.0.0.1/32`).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Networks that are never dialed; beats `allow`.
    #[serde(default)]
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

/// The egress decision, in order: `deny` (explicit) → refuse; `allow` (explicit) → permit;
/// loopback, link-local (cloud metadata lives there), unspecified, multicast or broadcast →
/// refuse; anything else → permit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    allow_ports: Vec<PortRange>,
    deny_ports: Vec<PortRange>,
}

impl From<EgressFile> for EgressPolicy {
    fn from(f: EgressFile) -> Self {
        let lower = |v: Vec<String>| v.into_iter().map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect();
        Self {
            allow: f.allow,
            deny: f.deny,
            allow_domains: lower(f.allow_domains),
            deny_domains: lower(f.deny_domains),
            allow_ports: f.allow_ports,
            deny_ports: f.deny_ports,
        }
    }
}

impl EgressPolicy {
    /// Whether `host:port` may be dialed at all, before resolution: the port rules, and the
    /// domain rules when `host` is a name. The resolved addresses still go through
    /// [`Self::permits`].
    pub fn permits_target(&self, host: &str, port: u16) -> bool {
        if self.deny_ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        if !self.allow_ports.is_empty() && !self.allow_ports.iter().any(|r| r.contains(port)) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if self.deny_domains.iter().any(|p| domain_matches(p, &name)) {
            return false;
        }
        self.allow_domains.is_empty() || self.allow_domains.iter().any(|p| domain_matches(p, &name))
    }

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

/// `example.com` matches exactly; `*.example.com` matches any name below it (not itself).
/// Both are expected lower-case.
pub fn domain_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name.strip_suffix(suffix).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == name,
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
            ..EgressFile::default()
        });
        assert!(p.permits(ip("127.0.0.1")));
        assert!(!p.permits(ip("127.0.0.2")));
        assert!(!p.permits(ip("10.0.0.1")));
    }

    #[test]
    fn names_and_ports_are_checked_before_resolution() {
        let p = EgressPolicy::from(EgressFile {
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
        assert!(p.permits_target("192.0.2.1", 80), "IP literals: address rules only");
        assert!(p.permits_target("[2001:db8::1]", 80));
        assert!(EgressPolicy::default().permits_target("anything.example", 1));
    }
}
