//! The client's config file (`wmproxy-client --config F`) and its validated form.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::Name;

use crate::egress::{EgressFile, EgressPolicy};
use crate::forward::{Forward, ForwardFile};
use crate::proxy::{Proxy, ProxyFile};
use crate::ranges::{self, Key, within};
use crate::secret::Secret;
use crate::service::{Service, ServiceFile};
use crate::tagged::Section;
use crate::{ConfigError, invalid};

/// The client's sections whose entries are tagged by `type`, with the tag of an untyped entry.
pub(crate) const TAGGED: &[Section] = &[("services", Some("tcp")), ("forwards", Some("tcp")), ("proxies", None)];

/// The client's config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The server, `host:port` (UDP).
    pub server_addr: Spanned<String>,
    /// How the tunnel reaches the server: `auto` (QUIC, and TLS on TCP when UDP does not get
    /// through), `quic` or `tcp`.
    #[serde(default)]
    pub transport: Transport,
    /// The server's TCP transport, `host:port`; defaults to `server_addr` (same host and port
    /// number, on TCP).
    #[serde(default)]
    pub tcp_server_addr: Option<Spanned<String>>,
    /// A proxy the TCP transport goes through: `http://[user:password@]host:port` (CONNECT)
    /// or `socks5://…`. The binary falls back to `HTTPS_PROXY` (or `ALL_PROXY`) when unset.
    #[serde(default, alias = "http_proxy")]
    pub proxy_url: Option<Spanned<String>>,
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
    /// Which targets the server's proxies (`via` = this client) may reach from here. It does
    /// not govern this client's own `[[proxies]]` and `[[forwards]]`: their connections leave
    /// from the server, under the server's `[egress]`.
    #[serde(default)]
    pub server_proxies_egress: Option<EgressFile>,
    /// The old name of `server_proxies_egress`, still read, with a deprecation warning.
    #[serde(default)]
    pub egress: Option<EgressFile>,
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
    /// Seconds between keep-alives of a quiet tunnel: keep it below the UDP mapping timeout
    /// of the NATs between the client and the server (often 30 s; some carriers less).
    pub keep_alive_secs: u64,
    /// The congestion controller of what the client sends through its tunnel.
    pub congestion: crate::Congestion,
    /// Seconds between QUIC handshakes tried while `transport = "auto"` runs on the TCP
    /// transport; when one completes, the tunnel moves back to QUIC.
    pub quic_probe_interval_secs: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_udp_flows: 1024,
            udp_flow_idle_timeout_secs: 60,
            keep_alive_secs: 10,
            congestion: crate::Congestion::default(),
            quic_probe_interval_secs: 30,
        }
    }
}

impl ClientLimits {
    /// [`Self::udp_flow_idle_timeout_secs`] as a duration.
    pub fn udp_flow_idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.udp_flow_idle_timeout_secs)
    }

    /// [`Self::quic_probe_interval_secs`] as a duration.
    pub fn quic_probe_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.quic_probe_interval_secs)
    }

    /// [`Self::keep_alive_secs`] as a duration.
    pub fn keep_alive(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keep_alive_secs)
    }
}

/// How the tunnel reaches the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC first; TLS on TCP when no QUIC handshake completes in time, with QUIC tried again
    /// in the background.
    #[default]
    Auto,
    /// QUIC only (UDP).
    Quic,
    /// TLS on TCP only.
    Tcp,
}

impl Transport {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
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

/// The validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientConfig {
    /// `host:port` of the server.
    pub server_addr: String,
    /// How the tunnel reaches the server.
    pub transport: Transport,
    /// `host:port` of the server's TCP transport.
    pub tcp_server_addr: String,
    /// The proxy the TCP transport goes through, if any.
    pub tcp_proxy: Option<crate::tcp_proxy::TcpProxy>,
    /// TLS server name.
    pub server_name: String,
    /// How the server is trusted.
    pub trust: ServerTrust,
    /// This client's name.
    pub name: Name,
    /// Its token.
    pub token: Secret,
    /// Services to publish.
    pub services: Vec<Service>,
    /// Local forwards.
    pub forwards: Vec<Forward>,
    /// Local proxies.
    pub proxies: Vec<Proxy>,
    /// Egress policy for the server's proxies that leave from here (`[server_proxies_egress]`).
    pub server_proxies_egress: EgressPolicy,
    /// Resource limits.
    pub limits: ClientLimits,
    /// The control API, if on.
    pub control: Option<crate::ControlFile>,
    /// What the file should say differently (deprecated names), for the client to log.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl ClientFile {
    /// Validates into a [`ClientConfig`]. `src` is the TOML text, used to name lines.
    pub fn validate(self, src: &str) -> Result<ClientConfig, ConfigError> {
        let addr_at = self.server_addr.span().start;
        let server_addr = self.server_addr.into_inner();
        let host =
            split_host_port(&server_addr).map_err(|m| invalid(src, "server_addr", Some(addr_at), &m))?.0.to_owned();
        let tcp_server_addr = match self.tcp_server_addr {
            Some(addr) => {
                let at = addr.span().start;
                split_host_port(addr.get_ref()).map_err(|m| invalid(src, "tcp_server_addr", Some(at), &m))?;
                addr.into_inner()
            }
            None => server_addr.clone(),
        };
        let tcp_proxy = match self.proxy_url {
            Some(url) => {
                let at = url.span().start;
                Some(
                    crate::tcp_proxy::TcpProxy::parse(url.get_ref())
                        .map_err(|m| invalid(src, "proxy_url", Some(at), &m))?,
                )
            }
            None => None,
        };

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

        let name = crate::name(src, "name", self.name)?;
        let limit = |key| [Key("limits"), Key(key)];
        within(src, &limit("max_udp_flows"), l.max_udp_flows, ranges::MAX_STREAMS)?;
        within(src, &limit("udp_flow_idle_timeout_secs"), l.udp_flow_idle_timeout_secs, ranges::UDP_IDLE_SECS)?;
        within(src, &limit("keep_alive_secs"), l.keep_alive_secs, ranges::KEEP_ALIVE_SECS)?;
        within(src, &limit("quic_probe_interval_secs"), l.quic_probe_interval_secs, ranges::PROBE_SECS)?;

        let mut seen = HashSet::new();
        let mut services = Vec::with_capacity(self.services.len());
        for (i, entry) in self.services.into_iter().enumerate() {
            let at = entry.name_span().start;
            let service = entry.validate(src, i)?;
            if !seen.insert(service.name.clone()) {
                let m = format!("duplicate service name `{}`", service.name);
                return Err(invalid(src, "services.name", Some(at), &m));
            }
            services.push(service);
        }
        let forwards = self.forwards.into_iter().map(|f| f.validate(src)).collect::<Result<Vec<_>, _>>()?;
        let proxies =
            self.proxies.into_iter().enumerate().map(|(i, p)| p.validate(src, i)).collect::<Result<Vec<_>, _>>()?;
        let mut warnings = Vec::new();
        let egress = match (self.server_proxies_egress, self.egress) {
            (Some(_), Some(_)) => {
                let m = "`[egress]` is the old name of `[server_proxies_egress]`: keep only the new one";
                return Err(invalid(src, "egress", None, m));
            }
            (Some(egress), None) => egress,
            (None, Some(egress)) => {
                warnings.push(
                    "`[egress]` in a client config is deprecated: call it `[server_proxies_egress]` (it limits only \
                     what the server's proxies reach through this client)"
                        .to_owned(),
                );
                egress
            }
            (None, None) => EgressFile::default(),
        };

        Ok(ClientConfig {
            server_name: self.server_name.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned()),
            server_addr,
            transport: self.transport,
            tcp_server_addr,
            tcp_proxy,
            trust,
            name,
            token: self.token,
            services,
            forwards,
            proxies,
            server_proxies_egress: EgressPolicy::client(egress),
            limits: self.limits,
            control: self.control,
            warnings,
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
