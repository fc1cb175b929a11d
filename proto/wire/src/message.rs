//! Every message of the protocol, with the channel it may appear on.
//!
//! Layouts below use the notation of the [module docs](super): `varint`, `str` (varint length
//! then UTF-8), `[T]` (varint count then items), `enum#n` (varint variant index `n`).
//! Enum variants are only ever appended; an index, once used, keeps its meaning.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::auth::{Proof, ResumeSecret};
use crate::frame::WireMessage;
use crate::name::{Name, Target};
use crate::private::{Candidates, PrivateSpec, Verifier};

/// First frame on the control stream, client → server.
///
/// Layout: `varint protocol_version | str client_name | 32 bytes proof |
/// Option<32 bytes> resume | varint servers`.
/// `protocol_version` must stay the first field (see [`crate::frame::peek_protocol_version`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// The client's name (checked while decoding).
    pub client_name: Name,
    /// `HMAC-SHA256(token, TLS exporter)`, see [`crate::auth`].
    pub proof: Proof,
    /// The secret the server's last [`HelloReply::Welcome`] gave this client process, if any:
    /// it shows this is the machine of the live session of the name, which it then replaces at
    /// once. Without it (or with another), a live session that answers the server keeps the
    /// name, and the Hello is refused [`RejectReason::NameInUse`].
    pub resume: Option<ResumeSecret>,
    /// How many servers the client keeps a tunnel to at once (`mode = "all"` with several);
    /// 1 otherwise. The server shows it; nothing else depends on it.
    pub servers: u32,
}
impl WireMessage for Hello {}

/// The server's per-client limits, which the client follows: it gives the server exactly the
/// stream credit these need (QUIC's stream windows follow the server's config, whatever its
/// value), and refuses a local connection past them at once instead of letting it wait for
/// credit.
///
/// Layout: `varint streams | varint udp_flows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelLimits {
    /// TCP connections either way at once (the server's `max_streams_per_client`).
    pub streams: u32,
    /// UDP flows either way at once (`max_udp_flows_per_client`); each may ride a stream.
    pub udp_flows: u32,
}

/// Server's answer to [`Hello`], on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HelloReply {
    /// `enum#0 | varint protocol_version | 32 bytes resume | TunnelLimits`: authenticated; the
    /// client may register.
    Welcome {
        /// The server's protocol version (equal to the client's).
        protocol_version: u32,
        /// What the client sends in its next [`Hello::resume`] to replace this session.
        resume: ResumeSecret,
        /// What either end may have open towards the other on this tunnel.
        limits: TunnelLimits,
    },
    /// `enum#1 | RejectReason`: the server closes the connection after sending this.
    Reject(RejectReason),
}
impl WireMessage for HelloReply {}

/// Why the server refused a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RejectReason {
    /// `enum#0 | varint server | varint client`.
    VersionMismatch {
        /// The server's protocol version.
        server: u32,
        /// The version the client announced.
        client: u32,
    },
    /// `enum#1`: unknown client name or wrong token (deliberately not told apart).
    BadCredentials,
    /// `enum#2 | varint retry_after_secs`: too many wrong proofs for this client name from this
    /// address (its /64 for IPv6). Only a wrong proof is ever answered so.
    Throttled {
        /// Seconds until the server accepts attempts from this address again.
        retry_after_secs: u32,
    },
    /// `enum#3`: the server has reached its client limit.
    ServerFull,
    /// `enum#4 | str`: the Hello was not valid (for example an over-long name).
    Invalid(String),
    /// `enum#5`: another machine is connected under this name and answered the server just
    /// now. Retrying is right: the name is free once that session ends.
    NameInUse,
    /// `enum#6 | varint max`: `max` names are connected with the shared token already.
    SharedTokenFull {
        /// The server's limit of names live through the shared token.
        max: u32,
    },
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::VersionMismatch { client, server } => {
                write!(f, "protocol version mismatch: server speaks version {server}, client speaks version {client}")
            }
            Self::BadCredentials => f.write_str("authentication failed: unknown client name or wrong token"),
            Self::Throttled { retry_after_secs } => {
                write!(f, "too many failed attempts for this name from this address; retry in {retry_after_secs} s")
            }
            Self::ServerFull => f.write_str("server is full (client limit reached)"),
            Self::Invalid(v0) => write!(f, "invalid hello: {v0}"),
            Self::NameInUse => {
                f.write_str("another machine is connected under this client name and still answers; retrying")
            }
            Self::SharedTokenFull { max } => write!(f, "the server's {max} names for the shared token are all in use"),
        }
    }
}

impl std::error::Error for RejectReason {}

/// Client → server on the control stream, after [`HelloReply::Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlRequest {
    /// `enum#0 | [ServiceSpec]`: publish these services (replaces any earlier registration).
    /// At most [`crate::MAX_SERVICES`] entries. Sent once after the Welcome, and again whenever
    /// the client's config is reloaded: services whose spec is unchanged keep their ports and
    /// connections, the others are withdrawn or published. Each is answered by
    /// [`ControlReply::Registered`].
    Register {
        /// The services to publish.
        services: Vec<ServiceSpec>,
    },
    /// `enum#1 | str service | bool ok | varint latency_us`: the result of one active health
    /// check of a grouped service's backend. **Not answered**: the server applies it to the
    /// backend's health (rise/fall) and sends no [`ControlReply`].
    Health {
        /// The service (a group member) that was checked.
        service: Name,
        /// Whether the check passed.
        ok: bool,
        /// How long the check took, microseconds.
        latency_us: u32,
    },
}
impl WireMessage for ControlRequest {}

/// Server → client on the control stream: one [`ControlReply::Registered`] per
/// [`ControlRequest::Register`], in order, and a [`ControlReply::Withdrawn`] whenever the server
/// takes back what it published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ControlReply {
    /// `enum#0 | [ServiceResult]`: one result per requested service, in request order.
    Registered {
        /// Per-service outcome.
        results: Vec<ServiceResult>,
    },
    /// `enum#1 | [ServiceResult]`: **unsolicited**, at any time after the first `Registered`
    /// and between replies: a reload of the server's config no longer allows these services
    /// (a narrower `allow_ports` or `allow_domains`, a group removed or its key changed), so
    /// they were withdrawn; each carries the refusal a registration would get now. At most
    /// [`crate::MAX_SERVICES`] entries.
    Withdrawn {
        /// The withdrawn services, each with why.
        results: Vec<ServiceResult>,
    },
}
impl WireMessage for ControlReply {}

/// One service a client asks the server to publish.
///
/// Layout: `str name | ServiceKind | varint remote_port | Option<GroupMembership> group |
/// Option<HttpSpec> http | Option<varint> bandwidth_limit | Option<PrivateSpec> private`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique per client (checked while decoding).
    pub name: Name,
    /// What is published.
    pub kind: ServiceKind,
    /// Public port on the server; `0` lets the server pick a free port in the allowance.
    /// Ignored for a group member: the group has its port.
    pub remote_port: u16,
    /// Join a load-balancing group as one of its backends instead of publishing a port.
    pub group: Option<GroupMembership>,
    /// For [`ServiceKind::Http`]: the host names and paths it serves.
    pub http: Option<HttpSpec>,
    /// For TCP and UDP services with a port of their own: bytes per second the server sends
    /// the service (the users' bytes), over all its connections or flows. The client limits
    /// the other way itself.
    pub bandwidth_limit: Option<u64>,
    /// Published as a private service: no public port; reachable only by the visitors this
    /// admits (see [`crate::private`]). Only for TCP services with no group.
    pub private: Option<PrivateSpec>,
}

/// The routes an HTTP service asks for on the vhost port.
///
/// Layout: `[str] custom_domains | Option<str> subdomain | [str] locations |
/// Option<str> host_header_rewrite | Option<BasicAuth> basic_auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSpec {
    /// Host names (`example.com`, `*.example.com`), lower-case.
    pub custom_domains: Vec<String>,
    /// A name under the server's `subdomain_host`.
    pub subdomain: Option<String>,
    /// Path prefixes (all paths when empty).
    pub locations: Vec<String>,
    /// The `Host` header the service sees.
    pub host_header_rewrite: Option<String>,
    /// HTTP Basic credentials the server requires before forwarding a request.
    pub basic_auth: Option<BasicAuth>,
}

/// A user name and password for HTTP Basic auth. `Debug` masks the password.
///
/// Layout: `str user | str password`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("user", &self.user).field("password", &"MASKED").finish()
    }
}

/// How a service joins a group.
///
/// Layout: `str group | str key | varint weight | bool drain | Option<HealthSpec> health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    /// The group's name, as configured on the server.
    pub group: Name,
    /// The group's key (compared in constant time; masked in `Debug`).
    pub key: GroupKey,
    /// Relative share of the group's work, at least 1.
    pub weight: u32,
    /// Joins drained: no new work.
    pub drain: bool,
    /// Present when the client runs an active check and will send [`ControlRequest::Health`].
    pub health: Option<HealthSpec>,
}

/// A group key. `Debug` prints `MASKED`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupKey(pub String);

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

/// The thresholds the server applies to a backend's reported checks.
///
/// Layout: `varint rise | varint fall | bool start_healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub fall: u32,
    /// Healthy before the first check.
    pub start_healthy: bool,
}

/// The kind of a published service. The one kind type of the project: the config's service,
/// forward and group entries are tagged with it (`type = "tcp"`), and the server's groups and
/// registrations match on it. Its serde names (`"tcp"`, …) matter only to JSON and TOML;
/// bincode carries the variant index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ServiceKind {
    /// `enum#0`: a TCP port; every public connection becomes one data stream.
    #[default]
    Tcp,
    /// `enum#1`: a UDP port; every user address becomes one flow (see [`crate::udp`]).
    /// Needs QUIC datagrams on the tunnel.
    Udp,
    /// `enum#2`: an HTTP service on the server's vhost port, reached by host name and path
    /// ([`ServiceSpec::http`]); every request becomes one data stream.
    Http,
    /// `enum#3`: a TLS service on the server's HTTPS port, reached by the SNI of the user's
    /// ClientHello ([`ServiceSpec::http`] names the hosts); TLS passes through untouched.
    Https,
    /// `enum#4`: a TCP service published as a WebSocket endpoint on the vhost port: the server
    /// accepts the WebSocket and carries its binary messages as the data stream's bytes.
    Ws,
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Http => "http",
            Self::Https => "https",
            Self::Ws => "ws",
        })
    }
}

/// The outcome of registering one [`ServiceSpec`].
///
/// Layout: `str name | RegisterOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceResult {
    /// The service's name, as requested.
    pub name: Name,
    /// What happened to it.
    pub outcome: RegisterOutcome,
}

/// Per-service registration result; one bad service does not sink the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RegisterOutcome {
    /// `enum#0 | varint port`: published on `port`.
    Ok {
        /// The public port (useful when `remote_port` was 0).
        port: u16,
    },
    /// `enum#1 | str allowed`: the port is outside this client's allowance, which `allowed`
    /// spells out (`"6000-6010, 8080"`) for this client alone.
    PortNotAllowed {
        /// The client's allowed ports.
        allowed: String,
    },
    /// `enum#2`: the port is taken on the server (by another client or program).
    PortInUse,
    /// `enum#3 | str`: the spec itself is wrong (duplicate or over-long name, …).
    Invalid(String),
    /// `enum#4`: a UDP service, but this tunnel does not carry QUIC datagrams (the client
    /// did not offer them in its transport parameters).
    DatagramsUnsupported,
    /// `enum#5 | varint port`: joined its group, which serves public port `port`.
    Joined {
        /// The group's public port.
        port: u16,
    },
    /// `enum#6`: the server has no group of that name (or of that type).
    UnknownGroup,
    /// `enum#7`: the group key is wrong.
    WrongGroupKey,
    /// `enum#8 | str domain`: the host name is outside this client's `allow_domains`, or the
    /// server has no vhost port (or no `subdomain_host` for a subdomain).
    DomainNotAllowed(String),
    /// `enum#9 | str route`: another service of this client already serves this host name and
    /// path.
    RouteTaken(String),
    /// `enum#10 | str host`: another client (or a group of the server) holds this host name,
    /// and with it every path under it, on the vhost and HTTPS ports alike.
    HostTaken(String),
    /// `enum#11`: published as a private service: no public port; visitors reach it through
    /// the server ([`OpenStream::Visit`]).
    Private,
}

impl std::fmt::Display for RegisterOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok { port } => write!(f, "published on port {port}"),
            Self::PortNotAllowed { allowed } => write!(f, "port not allowed for this client (allowed: {allowed})"),
            Self::PortInUse => f.write_str("port already in use on the server"),
            Self::Invalid(v0) => write!(f, "invalid service: {v0}"),
            Self::DatagramsUnsupported => f.write_str("UDP needs QUIC datagrams, which this tunnel does not support"),
            Self::Joined { port } => write!(f, "joined the group serving port {port}"),
            Self::UnknownGroup => f.write_str("no such group on the server"),
            Self::WrongGroupKey => f.write_str("wrong group key"),
            Self::DomainNotAllowed(v0) => write!(f, "host name `{v0}` not allowed for this client"),
            Self::RouteTaken(v0) => write!(f, "`{v0}` is already served by another service"),
            Self::HostTaken(v0) => write!(f, "host name `{v0}` belongs to another client or group"),
            Self::Private => f.write_str("published as a private service (visitors only)"),
        }
    }
}

impl std::error::Error for RegisterOutcome {}

/// First frame on a data stream, from the end that opened it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpenStream {
    /// `enum#0 | str service | SocketAddr peer_addr`, server → client: a user connected to
    /// the public port of `service`; the client dials the service's local address.
    Expose {
        /// Name of the registered service.
        service: Name,
        /// The user's address as the server saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#1 | str target | SocketAddr peer_addr`, client → server: a local forward; the
    /// server dials `target` (`host:port`, at most [`crate::MAX_TARGET_LEN`] bytes) if its
    /// egress policy allows.
    Connect {
        /// `host:port` to dial from the server.
        target: Target,
        /// The local user's address as the client saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#2 | str service | SocketAddr peer_addr`, server → client: a new UDP flow from
    /// `peer_addr` to the public port of `service` (see [`crate::udp`]). The stream carries the
    /// flow's packet framing after the answer, and lives as long as the flow.
    UdpExpose {
        /// Name of the registered UDP service.
        service: Name,
        /// The user's address as the server saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#3 | str target | SocketAddr peer_addr`, client → server: a new flow of a UDP local
    /// forward; the server sends its packets to `target` if its egress policy allows.
    UdpConnect {
        /// `host:port` the server sends to.
        target: Target,
        /// The local user's address as the client saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#4 | str target | SocketAddr peer_addr`, server → client: a user of one of the
    /// server's proxies (egress at this client); the client dials `target` if its own egress
    /// policy allows.
    ProxyConnect {
        /// `host:port` to dial from the client.
        target: Target,
        /// The proxy user's address as the server saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#5 | str target | SocketAddr peer_addr`, server → client: a UDP flow of a SOCKS5
    /// UDP ASSOCIATE on one of the server's proxies; the client sends its packets to `target`
    /// if its egress policy allows.
    ProxyUdpConnect {
        /// `host:port` the client sends to.
        target: Target,
        /// The proxy user's UDP address as the server saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#6`, server → client: are you there? The client answers `Ok` and ends the stream.
    /// The server asks a live session when another machine presents its name.
    Ping,
    /// `enum#7 | str client | str service | Option<Verifier> verifier | SocketAddr peer_addr`,
    /// client → server: a visitor's connection to the private TCP service `service` of
    /// `client`, showing `verifier` (see [`crate::private`]). The server checks it, opens an
    /// [`OpenStream::Expose`] to that client and answers with that stream's answer, or refuses
    /// with [`OpenResult::UnknownService`], [`OpenResult::Offline`] or
    /// [`OpenResult::Forbidden`].
    Visit {
        /// The client that published the service.
        client: Name,
        /// The private service's name.
        service: Name,
        /// Derived from the service's secret, if the visitor has one.
        verifier: Option<Verifier>,
        /// The local user's address as the visitor's client saw it.
        peer_addr: SocketAddr,
    },
    /// `enum#8 | str client | str service | ServiceKind kind | Option<Verifier> verifier |
    /// 32 bytes fingerprint | Candidates locals`, client → server: a visitor asks for a direct
    /// connection to the private service `service` (of `kind`, TCP or UDP) of `client` (see
    /// [`crate::private`]). Admitted as a
    /// [`OpenStream::Visit`] would be, the server opens an [`OpenStream::Punch`] to that client
    /// and answers `Ok` and then one [`crate::private::PeerInfo`] frame (the service's client),
    /// or refuses as for a visit (and `NotAllowed` when either tunnel is not QUIC).
    Rendezvous {
        /// The client that published the service.
        client: Name,
        /// The private service's name.
        service: Name,
        /// What the service is: TCP (its connections become `Visit` streams on the direct
        /// connection) or UDP (`UdpVisit` flows, packets as QUIC datagrams).
        kind: ServiceKind,
        /// Derived from the service's secret, if the visitor has one.
        verifier: Option<Verifier>,
        /// SHA-256 of the certificate the visitor presents on the direct connection.
        fingerprint: [u8; 32],
        /// The visitor's own interface addresses, with its tunnel socket's port.
        locals: Candidates,
    },
    /// `enum#9 | str visitor | str service | 32 bytes fingerprint | Candidates candidates`,
    /// server → client: client `visitor` was admitted to the private service `service` and
    /// will connect directly, presenting the certificate `fingerprint`, from one of
    /// `candidates`. The client answers `Ok` and one [`crate::private::PeerInfo`] frame (its
    /// own fingerprint and interface addresses), sends to the candidates so that its NAT lets
    /// the visitor in, and accepts the visitor's connection.
    Punch {
        /// The visiting client.
        visitor: Name,
        /// The private service.
        service: Name,
        /// SHA-256 of the visitor's certificate.
        fingerprint: [u8; 32],
        /// Where the visitor's packets will come from.
        candidates: Candidates,
    },
    /// `enum#10 | str client | str service | Option<Verifier> verifier | SocketAddr peer_addr`,
    /// client → server, or visitor → service's client on a direct connection: a new UDP flow
    /// from `peer_addr` to the private UDP service `service` of `client`; a flow stream (see
    /// [`crate::udp`]). Checked and answered as an [`OpenStream::Visit`].
    UdpVisit {
        /// The client that published the service.
        client: Name,
        /// The private UDP service's name.
        service: Name,
        /// Derived from the service's secret, if the visitor has one.
        verifier: Option<Verifier>,
        /// The local user's address as the visitor's client saw it.
        peer_addr: SocketAddr,
    },
}
impl WireMessage for OpenStream {}

/// Answer to an [`OpenStream`], from the end that accepted the stream, before any payload it
/// sends. Anything but `Ok` is followed by the stream's end, and the opener's pipelined payload
/// is discarded.
///
/// Layout: `enum#n` with no fields, `n` as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpenResult {
    /// `enum#0`: connected; raw bytes follow both ways.
    Ok,
    /// `enum#1`: the target refused the connection.
    Refused,
    /// `enum#2`: the target could not be reached (no route, DNS failure, …).
    Unreachable,
    /// `enum#3`: policy forbids this target.
    NotAllowed,
    /// `enum#4`: dialing the target timed out.
    Timeout,
    /// `enum#5`: no such service on this end.
    UnknownService,
    /// `enum#6`: this end has reached its limit of streams or flows.
    Busy,
    /// `enum#7`: the target accepted the connection and reset it before it could be carried.
    /// Not a refusal: the opener aborts its own side too (an RST), as a direct connection would
    /// have seen.
    Reset,
    /// `enum#8`: the client that publishes the visited service is not connected.
    Offline,
    /// `enum#9`: the visitor may not visit the service: a wrong or missing secret, or a client
    /// name the service does not allow (not told apart).
    Forbidden,
}

impl std::fmt::Display for OpenResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("connected"),
            Self::Refused => f.write_str("connection refused by the target"),
            Self::Unreachable => f.write_str("target unreachable"),
            Self::NotAllowed => f.write_str("target not allowed by the egress policy"),
            Self::Timeout => f.write_str("connecting to the target timed out"),
            Self::UnknownService => f.write_str("unknown service"),
            Self::Busy => f.write_str("too many open streams or flows"),
            Self::Reset => f.write_str("the target reset the connection"),
            Self::Offline => f.write_str("the service's client is not connected"),
            Self::Forbidden => f.write_str("not allowed to visit this service (wrong secret or client name)"),
        }
    }
}

impl std::error::Error for OpenResult {}
impl WireMessage for OpenResult {}
