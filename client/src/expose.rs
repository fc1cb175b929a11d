//! Streams the server opens: a user reached one of our published services. For TCP, dial the
//! service's local address, answer, relay; for a UDP flow, connect a socket to it and run the
//! flow. A user of one of the server's proxies (`ProxyConnect`) is dialed under our egress
//! policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::Semaphore;
use tracing::{Span, debug};
use wmproxy_config::{EgressPolicy, ProxyProtocol, ServiceType};
use wmproxy_proto::datastream;
use wmproxy_proto::udp::{FlowTable, UdpStats, flow};
use wmproxy_proto::wire::{OpenResult, OpenStream};

/// Time for the server's header, and for dialing a local service.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Published services by name: local address, kind, and the PROXY protocol header to send.
pub type Services = HashMap<String, (String, ServiceType, Option<ProxyProtocol>)>;

/// What streams of one tunnel share.
#[derive(Debug, Clone)]
pub struct ExposeContext {
    /// The configured services.
    pub services: Arc<Services>,
    /// The tunnel.
    pub conn: Connection,
    /// Its UDP flows.
    pub flows: Arc<FlowTable>,
    /// Permits for UDP flows (the client's `max_udp_flows`).
    pub udp_permits: Arc<Semaphore>,
    /// What the server's proxies may reach from here.
    pub egress: Arc<EgressPolicy>,
}

/// Serves one stream opened by the server, under the span `stream{service, peer, flow}`.
pub async fn serve(send: SendStream, recv: RecvStream, ctx: ExposeContext) {
    let Some((send, recv, header)) = datastream::read_header(send, recv, STREAM_OPEN_TIMEOUT).await else {
        return;
    };
    match header {
        OpenStream::Expose { service, peer_addr } => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            let dialed = match ctx.services.get(&service) {
                // Local services may be anywhere the client can reach, loopback included.
                Some((local, ServiceType::Tcp | ServiceType::Http | ServiceType::Https | ServiceType::Ws, pp)) => {
                    let dialed = wmproxy_proto::dial::dial(local, STREAM_OPEN_TIMEOUT, |_, _| true, |_| true).await;
                    match (dialed, pp) {
                        (Ok(tcp), Some(version)) => send_proxy_header(tcp, *version, peer_addr).await,
                        (dialed, _) => dialed,
                    }
                }
                _ => Err(OpenResult::UnknownService),
            };
            datastream::complete(send, recv, dialed).await;
        }
        OpenStream::UdpExpose { service, peer_addr } => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            let Some((local, ServiceType::Udp, _)) = ctx.services.get(&service) else {
                return datastream::refuse(send, OpenResult::UnknownService).await;
            };
            // Local services may be anywhere the client can reach, loopback included.
            let local = local.clone();
            udp_flow(ctx, send, recv, &local, |_, _| true, |_| true).await;
        }
        OpenStream::ProxyConnect { target, peer_addr } => {
            Span::current().record("service", "proxy").record("peer", tracing::field::display(peer_addr));
            debug!(%target, "proxy connection from the server");
            let egress = &ctx.egress;
            let (allow_target, allow_ip) = (|h: &str, p| egress.permits_target(h, p), |ip| egress.permits(ip));
            let dialed = wmproxy_proto::dial::dial(&target, STREAM_OPEN_TIMEOUT, allow_target, allow_ip).await;
            datastream::complete(send, recv, dialed).await;
        }
        OpenStream::ProxyUdpConnect { target, peer_addr } => {
            Span::current().record("service", "proxy-udp").record("peer", tracing::field::display(peer_addr));
            let egress = ctx.egress.clone();
            let (allow_target, allow_ip) = (|h: &str, p| egress.permits_target(h, p), |ip| egress.permits(ip));
            udp_flow(ctx, send, recv, &target, allow_target, allow_ip).await;
        }
        // Anything else the server may not ask of a client.
        _ => datastream::refuse(send, OpenResult::NotAllowed).await,
    }
}

/// Runs a UDP flow the server opened toward `target`: within the client's flow limit, with a
/// socket connected to the first address the checks allow.
async fn udp_flow(
    ctx: ExposeContext,
    send: SendStream,
    recv: RecvStream,
    target: &str,
    allow_target: impl Fn(&str, u16) -> bool,
    allow_ip: impl Fn(std::net::IpAddr) -> bool,
) {
    let Ok(_permit) = ctx.udp_permits.clone().try_acquire_owned() else {
        debug!("UDP flow limit reached; refusing a flow");
        UdpStats::bump(&ctx.flows.stats().dropped_flow_limit);
        return datastream::refuse(send, OpenResult::Busy).await;
    };
    match wmproxy_proto::dial::dial_udp(target, STREAM_OPEN_TIMEOUT, allow_target, allow_ip).await {
        Ok(socket) => flow::accept(ctx.conn, ctx.flows, Arc::new(socket), send, recv).await,
        Err(result) => datastream::refuse(send, result).await,
    }
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
    let header = match version {
        ProxyProtocol::V1 => ppp::v1::Addresses::from((peer, destination)).to_string().into_bytes(),
        ProxyProtocol::V2 => {
            let command = ppp::v2::Version::Two | ppp::v2::Command::Proxy;
            ppp::v2::Builder::with_addresses(command, ppp::v2::Protocol::Stream, (peer, destination))
                .build()
                .map_err(|_| OpenResult::Unreachable)?
        }
    };
    tcp.write_all(&header).await.map_err(|_| OpenResult::Unreachable)?;
    Ok(tcp)
}
