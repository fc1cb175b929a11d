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
use crate::visitor::{Visitor, VisitorFile};
use crate::{ConfigError, invalid};

/// The client's sections whose entries are tagged by `type`, with the tag of an untyped entry.
pub(crate) const TAGGED: &[Section] =
    &[("services", Some("tcp")), ("forwards", Some("tcp")), ("visitors", Some("tcp")), ("proxies", None)];

/// The client's config file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The server, `host:port` (UDP). With several servers, list them as `[[servers]]`
    /// instead.
    #[serde(default)]
    pub server_addr: Option<Spanned<String>>,
    /// The servers, each with its address, trust and (optionally) token: a tunnel to each
    /// (`mode = "all"`) or to one at a time (`"failover"`).
    #[serde(default)]
    pub servers: Vec<crate::servers::ServerFile>,
    /// With several servers: `all` (each publishes the services) or `failover`.
    #[serde(default)]
    pub mode: crate::servers::ServersMode,
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
    /// Its token (the default of every `[[servers]]` entry).
    #[serde(default)]
    pub token: Option<Secret>,
    /// Services to publish on the server.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    /// Local ports whose connections leave from the server.
    #[serde(default)]
    pub forwards: Vec<ForwardFile>,
    /// Local SOCKS5 and HTTP proxies whose connections leave from the server.
    #[serde(default)]
    pub proxies: Vec<ProxyFile>,
    /// Local ports whose connections reach other clients' private services.
    #[serde(default)]
    pub visitors: Vec<VisitorFile>,
    /// Which targets the server's proxies (`via` = this client) may reach from here. It does
    /// not govern this client's own `[[proxies]]` and `[[forwards]]`: their connections leave
    /// from the server, under the server's `[egress]`.
    #[serde(default)]
    pub server_proxies_egress: Option<EgressFile>,
    /// Which server the client's own forwards and proxies leave from: `first` (the first
    /// server up) or `balanced`. As a table, the old name of `server_proxies_egress`, still
    /// read, with a deprecation warning.
    #[serde(default)]
    pub egress: Option<crate::servers::EgressKey>,
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
    /// `mode = "failover"`: how long an earlier server of the list must keep answering before
    /// the client moves its tunnel back to it (so that a flapping server does not move it
    /// back and forth).
    pub failback_after_secs: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_udp_flows: 1024,
            udp_flow_idle_timeout_secs: 60,
            keep_alive_secs: 10,
            congestion: crate::Congestion::default(),
            quic_probe_interval_secs: 30,
            failback_after_secs: 30,
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

    /// [`Self::failback_after_secs`] as a duration.
    pub fn failback_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.failback_after_secs)
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

use crate::servers::EgressKey;
pub use crate::servers::{EgressChoice, ServerEntry, ServerTrust, ServersMode, parse_fingerprint, split_host_port};

/// The validated client configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientConfig {
    /// The servers, in the file's order (at least one).
    pub servers: Vec<ServerEntry>,
    /// A tunnel to every server, or one at a time.
    pub mode: ServersMode,
    /// Which server the client's own forwards and proxies leave from.
    pub egress: EgressChoice,
    /// How the tunnels reach the servers.
    pub transport: Transport,
    /// The proxy the TCP transport goes through, if any.
    pub tcp_proxy: Option<crate::tcp_proxy::TcpProxy>,
    /// This client's name.
    pub name: Name,
    /// Services to publish.
    pub services: Vec<Service>,
    /// Local forwards.
    pub forwards: Vec<Forward>,
    /// Local proxies.
    pub proxies: Vec<Proxy>,
    /// Visitors of other clients' private services.
    pub visitors: Vec<Visitor>,
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

        let top = crate::servers::TopLevel {
            server_addr: self.server_addr,
            tcp_server_addr: self.tcp_server_addr,
            server_name: self.server_name,
            trust: crate::servers::TrustKeys {
                fingerprint: self.server_fingerprint,
                ca_file: self.ca_file,
                system_roots: self.system_roots,
            },
            token: self.token,
        };
        let servers = crate::servers::validate(src, top, self.servers)?;

        let l = &self.limits;

        let name = crate::name(src, "name", self.name)?;
        let limit = |key| [Key("limits"), Key(key)];
        within(src, &limit("max_udp_flows"), l.max_udp_flows, ranges::MAX_STREAMS)?;
        within(src, &limit("udp_flow_idle_timeout_secs"), l.udp_flow_idle_timeout_secs, ranges::UDP_IDLE_SECS)?;
        within(src, &limit("keep_alive_secs"), l.keep_alive_secs, ranges::KEEP_ALIVE_SECS)?;
        within(src, &limit("quic_probe_interval_secs"), l.quic_probe_interval_secs, ranges::PROBE_SECS)?;
        within(src, &limit("failback_after_secs"), l.failback_after_secs, ranges::PROBE_SECS)?;

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
        let mut names = HashSet::new();
        let mut visitors = Vec::with_capacity(self.visitors.len());
        for entry in self.visitors {
            let at = entry.name_span().start;
            let visitor = entry.validate(src)?;
            if !names.insert(visitor.name.clone()) {
                let m = format!("duplicate visitor name `{}`", visitor.name);
                return Err(invalid(src, "visitors.name", Some(at), &m));
            }
            if visitor.client == name {
                let m = "a visitor reaches another client's service; this is this client's own name";
                return Err(invalid(src, "visitors.client", Some(at), m));
            }
            visitors.push(visitor);
        }
        let mut warnings = Vec::new();
        let (choice, old_egress) = match self.egress {
            Some(EgressKey::Choice(choice)) => (choice, None),
            Some(EgressKey::OldPolicy(policy)) => (EgressChoice::default(), Some(policy)),
            None => (EgressChoice::default(), None),
        };
        let egress = match (self.server_proxies_egress, old_egress) {
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
            servers,
            mode: self.mode,
            egress: choice,
            transport: self.transport,
            tcp_proxy,
            name,
            services,
            forwards,
            proxies,
            visitors,
            server_proxies_egress: EgressPolicy::client(egress),
            limits: self.limits,
            control: self.control,
            warnings,
        })
    }
}
