//! The server's config file (`wmproxy-server --config F`) and its validated form.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::egress::{EgressFile, EgressPolicy};
use crate::group::{GroupEntry, GroupFile};
use crate::ports::{PortAllowance, PortRange};
use crate::proxy::{ServerProxy, ServerProxyFile};
use crate::ranges::{self, Key, within};
use crate::secret::Secret;
use crate::tagged::Section;
use crate::vhost::VhostFile;
use crate::{ConfigError, invalid};

/// The server's sections whose entries are tagged by `type`, with the tag of an untyped entry.
pub(crate) const TAGGED: &[Section] = &[("groups", Some("tcp")), ("proxies", None)];

/// The documented default UDP port of the server.
pub const DEFAULT_PORT: u16 = 7835;

/// The server's config file as written. Every field has a default but authentication: set
/// `token` or add `[[clients]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// UDP address the QUIC endpoint binds.
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Where the generated identity (and token, for the embedded setup) live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// TCP address of the TCP transport (TLS on TCP, for clients whose network blocks UDP):
    /// `host:port`, or `off`. Unset: `bind`'s address and port, on TCP (where `bind` asks for
    /// any port, port 0, this takes any TCP port: read it from the log or `/status`).
    #[serde(default)]
    pub tcp_bind: Option<Spanned<String>>,
    /// Address the public TCP ports of services listen on.
    #[serde(default = "default_public_bind")]
    pub public_bind: IpAddr,
    /// One token for every client (any client name); simplest setup.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Ports clients authenticated with `token` may publish.
    #[serde(default = "default_allow_ports")]
    pub allow_ports: Vec<PortRange>,
    /// Host names clients authenticated with `token` may claim on the vhost port
    /// (`example.com`, `*.example.com`).
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// The HTTP virtual-host port.
    #[serde(default)]
    pub vhost: VhostFile,
    /// The control API; off without this table.
    #[serde(default)]
    pub control: Option<crate::ControlFile>,
    /// A PEM certificate and key; without them the server generates and keeps its own.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Which targets local forwards may reach from the server.
    #[serde(default)]
    pub egress: EgressFile,
    /// Named clients, each with its own token and port allowance.
    #[serde(default)]
    pub clients: Vec<ClientEntryFile>,
    /// Load-balancing groups: public ports served by backends that join with the group's key.
    #[serde(default)]
    pub groups: Vec<GroupFile>,
    /// SOCKS5 and HTTP proxies whose connections leave from a client (`via`).
    #[serde(default)]
    pub proxies: Vec<ServerProxyFile>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            state_dir: default_state_dir(),
            tcp_bind: None,
            public_bind: default_public_bind(),
            token: None,
            allow_ports: default_allow_ports(),
            allow_domains: Vec::new(),
            vhost: VhostFile::default(),
            control: None,
            tls: None,
            limits: Limits::default(),
            egress: EgressFile::default(),
            clients: Vec::new(),
            groups: Vec::new(),
            proxies: Vec::new(),
        }
    }
}

/// Every address, IPv4 and IPv6 (a dual-stack socket; IPv4 only where the host has no IPv6).
fn default_bind() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("wmproxy-state")
}
/// As [`default_bind`]: both IP versions.
fn default_public_bind() -> IpAddr {
    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}
fn default_allow_ports() -> Vec<PortRange> {
    PortAllowance::unprivileged().0
}

/// `[tls]`: certificate chain and private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Authenticated tunnels at once. A client over it is refused (`ServerFull`) after its
    /// proof, so a connection that has not authenticated never takes one.
    pub max_clients: u32,
    /// Names live at once through the shared `token` (not `[[clients]]` entries): a leaked
    /// token cannot take every client place.
    pub max_shared_clients: u32,
    /// Connections that have not authenticated yet, at once (TLS handshake to a checked
    /// proof). When it is full a new connection takes the place of the oldest, and under load
    /// a new address must prove it owns its address first (a QUIC retry).
    pub max_unauthenticated: u32,
    /// Connections that have not authenticated yet from one address (its /64 for IPv6); over
    /// it, new ones from that address are refused.
    pub max_unauthenticated_per_address: u32,
    /// Seconds a new connection has to complete TLS and present a correct proof.
    pub auth_timeout_secs: u64,
    /// Streams (TCP connections) one client may have open at once, each way.
    pub max_streams_per_client: u32,
    /// Connections one user (an address; its /64 for IPv6) may have open at once over every
    /// public TCP listener together: published ports, group ports, the vhost and HTTPS ports,
    /// the server's proxies. One over it is reset at once.
    pub max_connections_per_user: u32,
    /// Connections to the vhost, HTTPS and proxy ports that have not sent their first bytes,
    /// at once; a new one over it is closed.
    pub max_silent_connections: u32,
    /// Seconds a new tunnel has to authenticate and register.
    pub handshake_timeout_secs: u64,
    /// Seconds a data stream has to send its open header, and a dial to complete.
    pub stream_open_timeout_secs: u64,
    /// UDP flows (user address ↔ service or forward target) open at once, all clients
    /// together. A packet that would start a flow over a limit is dropped and counted.
    pub max_udp_flows: u32,
    /// UDP flows one client may have open at once.
    pub max_udp_flows_per_client: u32,
    /// Seconds without a packet either way after which a UDP flow is closed.
    pub udp_flow_idle_timeout_secs: u64,
    /// Seconds in-flight connections get to finish when the server stops (SIGTERM, ctrl-c,
    /// `/stop`): it stops accepting at once, then closes each tunnel, with its reason, once
    /// its connections are done or this time is up.
    pub drain_grace_secs: u64,
    /// The congestion controller of what the server sends through its tunnels.
    pub congestion: crate::Congestion,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clients: 256,
            max_shared_clients: 128,
            max_unauthenticated: 128,
            max_unauthenticated_per_address: 8,
            auth_timeout_secs: 5,
            max_streams_per_client: 1024,
            max_connections_per_user: 256,
            max_silent_connections: 1024,
            handshake_timeout_secs: 10,
            stream_open_timeout_secs: 10,
            max_udp_flows: 16_384,
            max_udp_flows_per_client: 1024,
            udp_flow_idle_timeout_secs: 60,
            drain_grace_secs: 30,
            congestion: crate::Congestion::default(),
        }
    }
}

impl Limits {
    /// What each client's Welcome tells it: the limits both ends follow on a tunnel.
    pub fn tunnel(&self) -> wmproxy_wire::TunnelLimits {
        wmproxy_wire::TunnelLimits { streams: self.max_streams_per_client, udp_flows: self.max_udp_flows_per_client }
    }

    /// [`Self::drain_grace_secs`] as a duration.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }
    /// [`Self::handshake_timeout_secs`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    /// [`Self::auth_timeout_secs`] as a duration, at most the handshake timeout.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs.min(self.handshake_timeout_secs))
    }
    /// [`Self::stream_open_timeout_secs`] as a duration.
    pub fn stream_open_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_open_timeout_secs)
    }
    /// [`Self::udp_flow_idle_timeout_secs`] as a duration.
    pub fn udp_flow_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.udp_flow_idle_timeout_secs)
    }
}

/// One `[[clients]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntryFile {
    /// The client's name, as it sends in its Hello.
    pub name: Spanned<String>,
    /// Its token.
    pub token: Secret,
    /// Ports it may publish.
    pub allow_ports: Vec<PortRange>,
    /// Host names it may claim on the vhost port.
    #[serde(default)]
    pub allow_domains: Vec<String>,
}

/// What a named client may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientEntry {
    /// Its token.
    pub token: Secret,
    /// Ports it may publish.
    pub allow_ports: PortAllowance,
    /// Host names it may claim (lower-case patterns).
    pub allow_domains: Vec<String>,
}

impl ClientEntry {
    /// Whether this client may claim `host` (normalized) on the vhost port.
    pub fn allows_domain(&self, host: &str) -> bool {
        self.allow_domains.iter().any(|p| crate::egress::domain_matches(p, host))
    }
}

/// Where the TCP transport listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TcpBind {
    /// `bind`'s address and port, on TCP.
    SameAsQuic,
    /// This address.
    At(SocketAddr),
    /// Nowhere: clients must reach the server over UDP.
    Off,
}

impl TcpBind {
    /// The address to bind, given `bind` (the QUIC endpoint's); `None` when off.
    pub fn addr(self, quic: SocketAddr) -> Option<SocketAddr> {
        match self {
            Self::SameAsQuic => Some(quic),
            Self::At(addr) => Some(addr),
            Self::Off => None,
        }
    }
}

/// The validated server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    /// UDP address of the QUIC endpoint.
    pub bind: SocketAddr,
    /// Directory for generated state.
    pub state_dir: PathBuf,
    /// Where the TCP transport listens.
    pub tcp_bind: TcpBind,
    /// Address public service ports listen on.
    pub public_bind: IpAddr,
    /// Shared token and its allowance, if set.
    pub shared: Option<ClientEntry>,
    /// Named clients; a named entry wins over the shared token.
    pub clients: HashMap<String, ClientEntry>,
    /// PEM files, or `None` for the generated identity.
    pub tls: Option<TlsFiles>,
    /// Resource limits.
    pub limits: Limits,
    /// Egress policy for local forwards.
    pub egress: EgressPolicy,
    /// Load-balancing groups, names unique.
    pub groups: Vec<GroupEntry>,
    /// Proxies with egress at a client, each with its `via`.
    pub proxies: Vec<ServerProxy>,
    /// The HTTP virtual-host port.
    pub vhost: VhostFile,
    /// The control API, if on.
    pub control: Option<crate::ControlFile>,
}

fn lower(domains: Vec<String>) -> Vec<String> {
    domains.iter().map(|d| crate::vhost::normalize_host(d)).collect()
}

impl ServerFile {
    /// Validates into a [`ServerConfig`]. `src` is the TOML text, used to name lines.
    pub fn validate(self, src: &str) -> Result<ServerConfig, ConfigError> {
        if self.token.is_none() && self.clients.is_empty() {
            return Err(invalid(
                src,
                "token",
                None,
                "no way for clients to authenticate: set `token` or add [[clients]]",
            ));
        }
        let l = &self.limits;
        let limit = |key| [Key("limits"), Key(key)];
        within(src, &limit("max_clients"), l.max_clients, ranges::MAX_CLIENTS)?;
        within(src, &limit("max_shared_clients"), l.max_shared_clients, ranges::MAX_CLIENTS)?;
        within(src, &limit("max_unauthenticated"), l.max_unauthenticated, ranges::MAX_CLIENTS)?;
        let per_address = l.max_unauthenticated_per_address;
        within(src, &limit("max_unauthenticated_per_address"), per_address, ranges::MAX_CLIENTS)?;
        within(src, &limit("auth_timeout_secs"), l.auth_timeout_secs, ranges::TIMEOUT_SECS)?;
        within(src, &limit("max_streams_per_client"), l.max_streams_per_client, ranges::MAX_STREAMS)?;
        within(src, &limit("max_silent_connections"), l.max_silent_connections, ranges::MAX_CLIENTS)?;
        let per_user = l.max_connections_per_user;
        within(src, &limit("max_connections_per_user"), per_user, ranges::MAX_STREAMS)?;
        within(src, &limit("handshake_timeout_secs"), l.handshake_timeout_secs, ranges::TIMEOUT_SECS)?;
        within(src, &limit("stream_open_timeout_secs"), l.stream_open_timeout_secs, ranges::TIMEOUT_SECS)?;
        within(src, &limit("max_udp_flows"), l.max_udp_flows, ranges::MAX_STREAMS)?;
        within(src, &limit("max_udp_flows_per_client"), l.max_udp_flows_per_client, ranges::MAX_STREAMS)?;
        within(src, &limit("udp_flow_idle_timeout_secs"), l.udp_flow_idle_timeout_secs, ranges::UDP_IDLE_SECS)?;
        within(src, &limit("drain_grace_secs"), l.drain_grace_secs, ranges::DRAIN_GRACE_SECS)?;
        let v = &self.vhost;
        let timeout = [Key("vhost"), Key("header_read_timeout_secs")];
        within(src, &timeout, v.header_read_timeout_secs, ranges::TIMEOUT_SECS)?;
        within(src, &[Key("vhost"), Key("body_timeout_secs")], v.body_timeout_secs, ranges::TIMEOUT_SECS)?;
        let head = u64::try_from(v.max_header_bytes).unwrap_or(u64::MAX);
        within(src, &[Key("vhost"), Key("max_header_bytes")], head, ranges::MAX_HEADER_BYTES)?;
        let rate = [Key("vhost"), Key("user_requests_per_minute")];
        within(src, &rate, v.user_requests_per_minute, ranges::REQUESTS_PER_MINUTE)?;
        within(src, &[Key("vhost"), Key("user_request_burst")], v.user_request_burst, ranges::REQUEST_BURST)?;
        let mut clients = HashMap::new();
        for entry in self.clients {
            let at = entry.name.span().start;
            let name = crate::name(src, "clients.name", entry.name)?;
            let value = ClientEntry {
                token: entry.token,
                allow_ports: PortAllowance(entry.allow_ports),
                allow_domains: lower(entry.allow_domains),
            };
            if clients.insert(name.to_string(), value).is_some() {
                return Err(invalid(src, "clients.name", Some(at), &format!("duplicate client name `{name}`")));
            }
        }
        let mut groups: Vec<GroupEntry> = Vec::with_capacity(self.groups.len());
        for (i, file) in self.groups.into_iter().enumerate() {
            let at = Some(file.name().span().start);
            let group = file.validate(src, i, &self.vhost)?;
            if groups.iter().any(|g| g.name == group.name) {
                return Err(invalid(src, "groups.name", at, &format!("duplicate group name `{}`", group.name)));
            }
            groups.push(group);
        }
        if self.vhost.tls.is_some() && self.vhost.https_bind.is_none() {
            return Err(invalid(src, "vhost.tls", None, "`[vhost.tls]` is for the HTTPS port: set `https_bind`"));
        }
        let proxies =
            self.proxies.into_iter().enumerate().map(|(i, p)| p.validate(src, i)).collect::<Result<Vec<_>, _>>()?;
        let tcp_bind = match self.tcp_bind {
            None => TcpBind::SameAsQuic,
            Some(text) if text.get_ref() == "off" => TcpBind::Off,
            Some(text) => TcpBind::At(text.get_ref().parse().map_err(|_| {
                let m = format!("`{}` is not an address (`host:port`, an IP) nor `off`", text.get_ref());
                invalid(src, "tcp_bind", Some(text.span().start), &m)
            })?),
        };
        // Another listener of this file on the same TCP address fails at start with "address in
        // use"; 443 is the natural choice for both the TCP transport and the HTTPS port.
        if let Some(addr) = tcp_bind.addr(self.bind) {
            let control = self.control.as_ref().map(|c| c.addr(crate::control::SERVER_CONTROL_BIND));
            let others = [
                ("vhost.http_bind", self.vhost.http_bind),
                ("vhost.https_bind", self.vhost.https_bind),
                ("control.bind", control),
            ];
            if let Some((key, _)) = others.iter().find(|(_, other)| *other == Some(addr) && addr.port() != 0) {
                let m = format!("the TCP transport and `{key}` cannot both listen on {addr}: give one another port");
                return Err(invalid(src, "tcp_bind", None, &m));
            }
        }
        Ok(ServerConfig {
            bind: self.bind,
            tcp_bind,
            state_dir: self.state_dir,
            public_bind: self.public_bind,
            shared: self.token.map(|token| ClientEntry {
                token,
                allow_ports: PortAllowance(self.allow_ports),
                allow_domains: lower(self.allow_domains),
            }),
            vhost: self.vhost,
            control: self.control,
            clients,
            tls: self.tls,
            limits: self.limits,
            egress: EgressPolicy::server(self.egress),
            groups,
            proxies,
        })
    }
}

impl ServerConfig {
    /// The entry that authenticates `client_name`: its own, else the shared token's.
    pub fn client(&self, client_name: &str) -> Option<&ClientEntry> {
        self.clients.get(client_name).or(self.shared.as_ref())
    }
}
