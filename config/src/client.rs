//! The client's config file (`wmproxy-client --config F`) and its validated form.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::egress::{EgressFile, EgressPolicy};
use crate::group::{GroupJoin, HealthCheck};
use crate::proxy::{Proxy, ProxyFile};
use crate::secret::Secret;
use crate::vhost::{HttpRoute, normalize_host};
use crate::{ConfigError, check_name, invalid};

/// The client's config file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The server, `host:port` (UDP).
    pub server_addr: Spanned<String>,
    /// Name checked against the server's certificate (with `ca_file` or `system_roots`);
    /// defaults to the host of `server_addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Trust exactly this certificate: SHA-256 fingerprint as printed by the server.
    #[serde(default)]
    pub server_fingerprint: Option<Spanned<String>>,
    /// Trust certificates issued by the CA(s) in this PEM file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trust the operating system's root certificates (for a real certificate).
    #[serde(default)]
    pub system_roots: bool,
    /// This client's name.
    pub name: Spanned<String>,
    /// Its token.
    pub token: Secret,
    /// Services to publish on the server.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    /// Local ports whose connections leave from the server.
    #[serde(default)]
    pub forwards: Vec<ForwardFile>,
    /// Local SOCKS5 and HTTP proxies whose connections leave from the server.
    #[serde(default)]
    pub proxies: Vec<ProxyFile>,
    /// Which targets the server's proxies may reach from this client.
    #[serde(default)]
    pub egress: EgressFile,
    /// Resource limits.
    #[serde(default)]
    pub limits: ClientLimits,
    /// The client's control API; off without this table.
    #[serde(default)]
    pub control: Option<crate::ControlFile>,
}

/// The client's `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// UDP flows open at once (services and forwards together). A packet that would start a
    /// flow over the limit is dropped and counted; a flow the server asks for is refused.
    pub max_udp_flows: u32,
    /// Seconds without a packet either way after which a UDP flow is closed. The server has
    /// its own setting; the shorter one wins.
    pub udp_flow_idle_timeout_secs: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self { max_udp_flows: 1024, udp_flow_idle_timeout_secs: 60 }
    }
}

impl ClientLimits {
    /// [`Self::udp_flow_idle_timeout_secs`] as a duration.
    pub fn udp_flow_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.udp_flow_idle_timeout_secs)
    }
}

/// One `[[services]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Unique name within this client.
    pub name: Spanned<String>,
    /// `"tcp"` (the default) or `"udp"`.
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    /// Where the service listens, reachable from the client.
    pub local_addr: String,
    /// Public port on the server; 0 (the default) lets the server choose. Not used with
    /// `group`: the group's port is set on the server.
    #[serde(default)]
    pub remote_port: u16,
    /// Join this load-balancing group of the server instead of publishing a port of its own.
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    /// The group's key.
    #[serde(default)]
    pub group_key: Option<Secret>,
    /// Share of the group's work relative to other backends (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Join drained: no new work (for maintenance).
    #[serde(default)]
    pub drain: bool,
    /// Active health check, run here and reported to the server.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// `type = "http"`: host names served on the server's vhost port.
    #[serde(default)]
    pub custom_domains: Vec<String>,
    /// `type = "http"`: served at `<subdomain>.<the server's subdomain_host>`.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// `type = "http"`: path prefixes served (all paths when empty); the longest match wins.
    #[serde(default)]
    pub locations: Vec<String>,
    /// `type = "http"`: the `Host` header the service sees.
    #[serde(default)]
    pub host_header_rewrite: Option<String>,
    /// `type = "http"`: require HTTP Basic auth with this user name (and `http_password`).
    #[serde(default)]
    pub http_user: Option<String>,
    /// `type = "http"`: the password for `http_user`.
    #[serde(default)]
    pub http_password: Option<Secret>,
    /// Send a PROXY protocol header (`"v1"` or `"v2"`) to the service before the user's bytes,
    /// so it learns the user's real address.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Log one line per finished connection (user, bytes each way, duration, result); on by
    /// default.
    #[serde(default)]
    pub access_log: Option<bool>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 …`).
    V1,
    /// The binary header.
    V2,
}

/// The kind of a service or forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// A TCP port.
    #[default]
    Tcp,
    /// A UDP port, carried as QUIC datagrams.
    Udp,
    /// An HTTP service, reached by host name on the server's vhost port.
    Http,
    /// A TLS service, reached by SNI host name on the server's HTTPS port (TLS passed through).
    Https,
    /// A TCP service published as a WebSocket endpoint on the server's vhost port (one
    /// WebSocket connection ↔ one TCP connection, binary messages); as a forward, a local TCP
    /// port whose connections become WebSocket connections to the `target` URL.
    Ws,
}

/// One `[[forwards]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    /// `"tcp"` (the default) or `"udp"`.
    #[serde(default, rename = "type")]
    pub kind: ServiceType,
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// `host:port` the server dials (or, for UDP, sends to).
    pub target: Spanned<String>,
}

/// How the client decides to trust the server. Exactly one is configured: there is no
/// insecure mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServerTrust {
    /// SHA-256 of the server certificate (32 bytes).
    Fingerprint([u8; 32]),
    /// CA certificates from a PEM file.
    CaFile(PathBuf),
    /// The system's root certificates.
    SystemRoots,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Kind.
    pub kind: ServiceType,
    /// Local `host:port`.
    pub local_addr: String,
    /// Requested public port (0: server chooses).
    pub remote_port: u16,
    /// The group it joins, if any.
    pub group: Option<GroupJoin>,
    /// For `type = "http"`: its host names and paths.
    pub http: Option<HttpRoute>,
    /// The PROXY protocol header to send the service, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Log each finished connection.
    pub access_log: bool,
}

/// A validated local forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    /// TCP or UDP.
    pub kind: ServiceType,
    /// Local listen address.
    pub listen: SocketAddr,
    /// `host:port` dialed from the server.
    pub target: String,
}

/// The validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientConfig {
    /// `host:port` of the server.
    pub server_addr: String,
    /// TLS server name.
    pub server_name: String,
    /// How the server is trusted.
    pub trust: ServerTrust,
    /// This client's name.
    pub name: String,
    /// Its token.
    pub token: Secret,
    /// Services to publish.
    pub services: Vec<Service>,
    /// Local forwards.
    pub forwards: Vec<Forward>,
    /// Local proxies.
    pub proxies: Vec<Proxy>,
    /// Egress policy for the server's proxies that leave from here.
    pub egress: EgressPolicy,
    /// Resource limits.
    pub limits: ClientLimits,
    /// The control API, if on.
    pub control: Option<crate::ControlFile>,
}

impl ClientFile {
    /// Validates into a [`ClientConfig`]. `src` is the TOML text, used to name lines.
    pub fn validate(self, src: &str) -> Result<ClientConfig, ConfigError> {
        let addr_at = self.server_addr.span().start;
        let server_addr = self.server_addr.into_inner();
        let host =
            split_host_port(&server_addr).map_err(|m| invalid(src, "server_addr", Some(addr_at), &m))?.0.to_owned();

        let trust = match (self.server_fingerprint, self.ca_file, self.system_roots) {
            (Some(fp), None, false) => {
                let at = fp.span().start;
                ServerTrust::Fingerprint(
                    parse_fingerprint(fp.get_ref()).map_err(|m| invalid(src, "server_fingerprint", Some(at), &m))?,
                )
            }
            (None, Some(path), false) => ServerTrust::CaFile(path),
            (None, None, true) => ServerTrust::SystemRoots,
            (None, None, false) => {
                return Err(invalid(
                    src,
                    "server_fingerprint",
                    None,
                    "no way to trust the server: set one of `server_fingerprint`, `ca_file` or `system_roots = true`",
                ));
            }
            _ => {
                return Err(invalid(
                    src,
                    "server_fingerprint",
                    None,
                    "set only one of `server_fingerprint`, `ca_file` and `system_roots`",
                ));
            }
        };

        let l = &self.limits;
        if l.max_udp_flows == 0 || l.udp_flow_idle_timeout_secs == 0 {
            return Err(invalid(src, "limits", None, "limits must be at least 1"));
        }

        let name_at = self.name.span().start;
        let name = self.name.into_inner();
        check_name(&name).map_err(|m| invalid(src, "name", Some(name_at), &m))?;

        let mut seen = HashSet::new();
        let mut services = Vec::with_capacity(self.services.len());
        for s in self.services {
            let at = s.name.span().start;
            let sname = s.name.into_inner();
            check_name(&sname).map_err(|m| invalid(src, "services.name", Some(at), &m))?;
            if !seen.insert(sname.clone()) {
                return Err(invalid(src, "services.name", Some(at), &format!("duplicate service name `{sname}`")));
            }
            split_host_port(&s.local_addr).map_err(|m| invalid(src, "services.local_addr", Some(at), &m))?;
            let group = match (s.group, s.group_key) {
                (None, None) if s.health_check.is_none() && s.weight.is_none() && !s.drain => None,
                (None, _) => {
                    let m = "`group_key`, `weight`, `drain` and `health_check` need `group`";
                    return Err(invalid(src, "services.group", Some(at), m));
                }
                (Some(_), None) => {
                    return Err(invalid(src, "services.group_key", Some(at), "`group` needs `group_key`"));
                }
                (Some(group), Some(key)) => {
                    let group_at = group.span().start;
                    let group = group.into_inner();
                    check_name(&group).map_err(|m| invalid(src, "services.group", Some(group_at), &m))?;
                    if s.remote_port != 0 {
                        let m = "a group's port is set on the server; leave `remote_port` out";
                        return Err(invalid(src, "services.remote_port", Some(at), m));
                    }
                    if s.weight == Some(0) {
                        return Err(invalid(src, "services.weight", Some(at), "weight must be at least 1"));
                    }
                    if let Some(m) = s.health_check.as_ref().and_then(HealthCheck::problem) {
                        return Err(invalid(src, "services.health_check", Some(at), m));
                    }
                    if s.kind == ServiceType::Udp && s.health_check.as_ref().is_some_and(|h| h.addr.is_none()) {
                        let m = "a UDP service's health check needs `addr` (a TCP or HTTP port that tells its health)";
                        return Err(invalid(src, "services.health_check.addr", Some(at), m));
                    }
                    if let Some(addr) = s.health_check.as_ref().and_then(|h| h.addr.as_deref()) {
                        split_host_port(addr).map_err(|m| invalid(src, "services.health_check.addr", Some(at), &m))?;
                    }
                    Some(GroupJoin {
                        group,
                        key,
                        weight: s.weight.unwrap_or(1),
                        drain: s.drain,
                        health_check: s.health_check,
                    })
                }
            };
            let http = if group.is_some() {
                let named = !s.custom_domains.is_empty() || s.subdomain.is_some() || !s.locations.is_empty();
                if named || s.host_header_rewrite.is_some() || s.http_user.is_some() || s.http_password.is_some() {
                    let m = "a group's host names and HTTP settings are set on the server; leave them out";
                    return Err(invalid(src, "services.group", Some(at), m));
                }
                None
            } else if matches!(s.kind, ServiceType::Http | ServiceType::Https | ServiceType::Ws) {
                if s.custom_domains.is_empty() && s.subdomain.is_none() {
                    let m = "an HTTP service needs `custom_domains` or `subdomain`";
                    return Err(invalid(src, "services.custom_domains", Some(at), m));
                }
                if s.locations.iter().any(|l| !l.starts_with('/')) {
                    return Err(invalid(src, "services.locations", Some(at), "a location starts with `/`"));
                }
                Some(HttpRoute {
                    custom_domains: s.custom_domains.iter().map(|d| normalize_host(d)).collect(),
                    subdomain: s.subdomain.map(|d| normalize_host(&d)),
                    locations: s.locations,
                    host_header_rewrite: s.host_header_rewrite,
                    basic_auth: match (s.http_user, s.http_password) {
                        (None, None) => None,
                        (Some(user), Some(password)) if s.kind == ServiceType::Http => Some((user, password)),
                        _ => {
                            let m = "set both `http_user` and `http_password` (type = \"http\" only), or neither";
                            return Err(invalid(src, "services.http_user", Some(at), m));
                        }
                    },
                })
            } else if !s.custom_domains.is_empty() || s.subdomain.is_some() || !s.locations.is_empty() {
                let m = "`custom_domains`, `subdomain` and `locations` are for `type = \"http\"` and `\"https\"`";
                return Err(invalid(src, "services.type", Some(at), m));
            } else {
                None
            };
            if s.proxy_protocol.is_some() && s.kind == ServiceType::Udp {
                return Err(invalid(
                    src,
                    "services.proxy_protocol",
                    Some(at),
                    "PROXY protocol is for TCP and HTTP services",
                ));
            }
            services.push(Service {
                name: sname,
                kind: s.kind,
                local_addr: s.local_addr,
                remote_port: s.remote_port,
                group,
                http,
                proxy_protocol: s.proxy_protocol,
                access_log: s.access_log.unwrap_or(true),
            });
        }

        let mut forwards = Vec::with_capacity(self.forwards.len());
        for f in self.forwards {
            let at = f.target.span().start;
            let target = f.target.into_inner();
            if f.kind == ServiceType::Ws {
                let ok = target.strip_prefix("ws://").is_some_and(|rest| !rest.is_empty());
                if !ok {
                    return Err(invalid(src, "forwards.target", Some(at), "a \"ws\" forward's target is a ws:// URL"));
                }
                forwards.push(Forward { kind: f.kind, listen: f.listen, target });
                continue;
            }
            split_host_port(&target).map_err(|m| invalid(src, "forwards.target", Some(at), &m))?;
            if matches!(f.kind, ServiceType::Http | ServiceType::Https) {
                return Err(invalid(src, "forwards.type", Some(at), "a forward is \"tcp\" or \"udp\""));
            }
            forwards.push(Forward { kind: f.kind, listen: f.listen, target });
        }

        let mut proxies = Vec::with_capacity(self.proxies.len());
        for p in self.proxies {
            if p.via.is_some() {
                return Err(invalid(src, "proxies.via", None, "`via` is for the server's proxies"));
            }
            proxies.push(p.validate().map_err(|m| invalid(src, "proxies", None, m))?);
        }

        Ok(ClientConfig {
            server_name: self.server_name.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned()),
            server_addr,
            trust,
            name,
            token: self.token,
            services,
            forwards,
            proxies,
            egress: self.egress.into(),
            limits: self.limits,
            control: self.control,
        })
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6), checking both parts are present.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("`{s}` is not host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.len() > 255 {
        return Err(bad());
    }
    Ok((host, port))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons allowed.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    let bad = || format!("a fingerprint is 64 hex digits (colons allowed), got `{s}`");
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
        *slot = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    Ok(out)
}
