//! Reaching this client's published services: what the streams of a tunnel, and of the
//! direct connections of visitors, need ([`Exposer`]), and the one way a TCP user reaches a
//! local service ([`carry_tcp`]: dial, PROXY header, answer, relay, access log), and a UDP
//! flow its target ([`udp_flow`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info};
use wmproxy_config::{EgressPolicy, ProxyProtocol, Service};
use wmproxy_tunnel::bandwidth::Bandwidth;
use wmproxy_tunnel::datastream;
use wmproxy_tunnel::dial::OwnAddresses;
use wmproxy_tunnel::relay::{Limits, RelayStats, Tally};
use wmproxy_tunnel::udp::{UdpStats, flow};
use wmproxy_tunnel::{RecvStream, SendStream, Tunnel};
use wmproxy_wire::{Name, OpenResult, Target};

/// Time for the server's header, and for dialing a local service.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the streams the server opens need, whatever the tunnel.
#[derive(Debug)]
pub struct Exposer {
    /// The configured services, as last reloaded.
    pub services: watch::Receiver<Arc<Vec<Service>>>,
    /// What the server's proxies may reach from here.
    pub egress: EgressPolicy,
    /// This machine's addresses, which the egress policy refuses by default.
    pub own_addresses: Arc<OwnAddresses>,
    /// Per-service counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each limited service's bandwidth for what we send the server, shared by its
    /// connections and flows.
    pub bandwidths: Bandwidths,
    /// Direct connections from visitors of the private services.
    pub direct: Arc<crate::direct::Direct>,
    /// This client's name (a private service's verifier is bound to it).
    pub client: Name,
    /// Where tasks spawned for direct connections run.
    pub tracker: tokio_util::task::TaskTracker,
    /// This tunnel's QUIC endpoint (none over the TCP transport): a visitor announced on this
    /// tunnel connects to it, at the address this tunnel's server saw.
    pub endpoint: Option<quinn::Endpoint>,
}

/// The bandwidth limits of the services, by name, made on first use.
#[derive(Debug, Default)]
pub struct Bandwidths(std::sync::Mutex<std::collections::HashMap<Name, (u64, Arc<Bandwidth>)>>);

impl Bandwidths {
    /// `service`'s limit, if it has one: the same one for all its connections and flows, a new
    /// one when a reload changed its rate. Holds at most one entry per configured service.
    pub(crate) fn of(&self, service: &Service, services: &[Service]) -> Option<Arc<Bandwidth>> {
        let rate = service.exposure.bandwidth_limit()?;
        let mut limits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, limit)) = limits.get(&service.name)
            && *known == rate
        {
            return Some(limit.clone());
        }
        // Forget services a reload removed or unlimited, before adding.
        limits.retain(|name, _| services.iter().any(|s| s.name == *name && s.exposure.bandwidth_limit().is_some()));
        let limit = Bandwidth::new(rate);
        limits.insert(service.name.clone(), (rate, limit.clone()));
        Some(limit)
    }
}

/// Dials the local address of `found` (a TCP service) for a user at `peer_addr` (with its
/// PROXY header, if the service wants one), answers the stream and relays; counted and logged
/// as a connection to the service. A server's `Expose` and a direct visitor's `Visit` end here.
pub(crate) async fn carry_tcp(
    (send, recv): (SendStream, RecvStream),
    found: &Service,
    peer_addr: std::net::SocketAddr,
    ctx: &Exposer,
) {
    let started = Instant::now();
    // Local services may be anywhere the client can reach, loopback included.
    let dialed = wmproxy_tunnel::dial::dial(&found.local_addr, STREAM_OPEN_TIMEOUT, |_, _| true, |_| true).await;
    let dialed = match (dialed, found.exposure.proxy_protocol()) {
        (Ok(tcp), Some(version)) => send_proxy_header(tcp, version, peer_addr).await,
        (dialed, _) => dialed,
    };
    let limit = ctx.bandwidths.of(found, &ctx.services.borrow());
    let (tally, counted) = (Tally::default(), ctx.metrics.connection(&found.name));
    let meter = (&tally, &counted);
    let limits = Limits { bandwidth: limit.as_deref(), idle: found.exposure.idle_timeout(), meter: Some(&meter) };
    let outcome = datastream::complete_within(send, recv, dialed, &limits).await;
    if found.access_log {
        access_log(found, peer_addr, started, (tally.stats(), &outcome));
    }
}

/// The access log: one structured event per finished connection to a published service, with
/// target `wmproxy::access` (filter it with `RUST_LOG=wmproxy::access=info`). The bytes are
/// those that passed, whatever the outcome: a connection cut half-way reports what it carried.
fn access_log(
    service: &Service,
    peer: std::net::SocketAddr,
    started: Instant,
    (carried, outcome): (RelayStats, &Result<RelayStats, datastream::DataStreamError>),
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (bytes_in, bytes_out) = (carried.quic_to_tcp, carried.tcp_to_quic);
    let result = match outcome {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    info!(
        target: "wmproxy::access",
        service = %service.name,
        user = %peer,
        backend = %service.local_addr,
        bytes_in,
        bytes_out,
        duration_ms,
        %result,
        "connection finished"
    );
}

/// Writes a PROXY protocol header naming the user (`peer`) as the source to a freshly dialed
/// service, before any of the user's bytes.
async fn send_proxy_header(
    mut tcp: tokio::net::TcpStream,
    version: ProxyProtocol,
    peer: std::net::SocketAddr,
) -> Result<tokio::net::TcpStream, OpenResult> {
    use tokio::io::AsyncWriteExt;
    let destination = tcp.peer_addr().map_err(|_| OpenResult::Unreachable)?;
    let header = proxy_header(version, peer, destination)?;
    tcp.write_all(&header).await.map_err(|_| OpenResult::Unreachable)?;
    Ok(tcp)
}

/// The PROXY protocol header (`version`) naming `peer` as the source and `destination` as the
/// destination. The two may be of different families (an IPv6 user of an IPv4 service): both
/// are then written as IPv6, IPv4-mapped, since the protocol wants one family.
pub fn proxy_header(
    version: ProxyProtocol,
    peer: std::net::SocketAddr,
    destination: std::net::SocketAddr,
) -> Result<Vec<u8>, OpenResult> {
    use std::net::{IpAddr, SocketAddr};
    let as_v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let (peer, destination) =
        if peer.is_ipv4() == destination.is_ipv4() { (peer, destination) } else { (as_v6(peer), as_v6(destination)) };
    match version {
        ProxyProtocol::V1 => Ok(ppp::v1::Addresses::from((peer, destination)).to_string().into_bytes()),
        ProxyProtocol::V2 => {
            let command = ppp::v2::Version::Two | ppp::v2::Command::Proxy;
            ppp::v2::Builder::with_addresses(command, ppp::v2::Protocol::Stream, (peer, destination))
                .build()
                .map_err(|_| OpenResult::Unreachable)
        }
    }
}

/// Runs a UDP flow the peer opened on `tunnel` (the server's, or a visitor's direct
/// connection) toward `target`: within the client's flow
/// limit, with a socket connected to the first address the checks allow, and what it sends
/// the server within `limit`.
pub(crate) async fn udp_flow(
    tunnel: &Tunnel,
    (send, recv): (SendStream, RecvStream),
    (target, limit): (&Target, Option<Arc<Bandwidth>>),
    allow_target: impl Fn(&str, u16) -> bool,
    allow_ip: impl Fn(std::net::IpAddr) -> bool,
) {
    let Some(_permit) = tunnel.flow_permit() else {
        debug!("UDP flow limit reached; refusing a flow");
        UdpStats::bump(&tunnel.flows().stats().dropped_flow_limit);
        return datastream::refuse(send, OpenResult::Busy).await;
    };
    match wmproxy_tunnel::dial::dial_udp(target, STREAM_OPEN_TIMEOUT, allow_target, allow_ip).await {
        Ok(socket) => flow::accept_within(tunnel, Arc::new(socket), (send, recv), limit).await,
        Err(result) => datastream::refuse(send, result).await,
    }
}
