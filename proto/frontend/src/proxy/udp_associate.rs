//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7) over QUIC datagrams: a relay socket for one user, whose
//! datagrams become UDP flows (`UdpConnect`, one per destination) through the tunnel. The far
//! end applies its egress policy to each destination when its flow opens.
//!
//! Only datagrams from the user's IP are taken, and the first one fixes its port; others, and
//! fragments (`FRAG` ≠ 0), are dropped and counted. The association, with its flows, ends when
//! the user's TCP connection closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fast_socks5::ReplyError;
use fast_socks5::server::{Socks5ServerProtocol, states};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use wmproxy_tunnel::udp::{Flow, Sink, UdpStats, flow};
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, Tunnel, Upstream};
use wmproxy_wire::Target;
use wmproxy_wire::udp::MAX_PACKET_LEN;

use super::socks_udp;

/// Destinations one association may have flows to at once; beyond, packets are dropped.
pub const MAX_DESTINATIONS: usize = 256;

/// Runs one association until the user's TCP connection closes. Each destination's flow goes
/// where `upstream` routes it ([`Ask::Target`]); a destination it cannot route now (no tunnel,
/// a flow limit) loses its packets, counted.
pub(super) async fn run<U: Upstream>(
    protocol: Socks5ServerProtocol<TcpStream, states::CommandRead>,
    (peer, local): (SocketAddr, SocketAddr),
    upstream: &U,
    stats: &UdpStats,
    tracker: TaskTracker,
    open_timeout: Duration,
) {
    // The relay listens on the address the user reached us at.
    let socket = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            debug!(error = %e, "cannot bind the UDP relay");
            let _ = protocol.reply_error(&ReplyError::GeneralFailure).await;
            return;
        }
    };
    let Ok(relay_addr) = socket.local_addr() else { return };
    let Ok(mut tcp) = protocol.reply_success(relay_addr).await else { return };
    if socket.writable().await.is_err() {
        return;
    }
    debug!(%relay_addr, "UDP association open");

    let done = CancellationToken::new();
    let mut user: Option<SocketAddr> = None;
    let mut flows: HashMap<Vec<u8>, (Arc<Flow>, Arc<Tunnel>)> = HashMap::new();
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    let mut tcp_buf = [0u8; 64];
    loop {
        let (n, from) = tokio::select! {
            // Anything but data on the control connection (its end, an error) ends the association.
            read = tcp.read(&mut tcp_buf) => match read {
                Ok(n) if n > 0 => continue,
                _ => break,
            },
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        if wmproxy_tunnel::users::canonical(from).ip() != peer.ip() || user.is_some_and(|u| u != from) {
            debug!(%from, "datagram from another address; dropped");
            UdpStats::bump(&stats.dropped_malformed);
            continue;
        }
        let user = *user.get_or_insert(from);
        let datagram = match socks_udp::parse(buf.get(..n).unwrap_or_default()) {
            Ok(d) if d.frag == 0 => d,
            _ => {
                UdpStats::bump(&stats.dropped_malformed);
                continue;
            }
        };
        if let Some((flow, tunnel)) = flows.get(datagram.address).filter(|(f, _)| !f.done().is_cancelled()) {
            flow.send(tunnel.conn(), datagram.payload);
            continue;
        }
        flows.retain(|_, (f, _)| !f.done().is_cancelled());
        if flows.len() >= MAX_DESTINATIONS {
            UdpStats::bump(&stats.dropped_flow_limit);
            continue;
        }
        let Ok(target) = Target::new(&datagram.target) else {
            UdpStats::bump(&stats.dropped_malformed);
            continue;
        };
        let FlowRoute { tunnel, header, ends_with: _, hold, limit: _ } = match upstream.flow(user, Ask::Target(target))
        {
            Ok(route) => route,
            Err(e) => {
                debug!(error = %e, "no route for this destination now; packet dropped");
                UdpStats::bump(&stats.dropped_no_tunnel);
                continue;
            }
        };
        let prefix: Arc<[u8]> = socks_udp::reply_header(datagram.address).into();
        let sink = Sink::Prefixed { socket: socket.clone(), peer: user, prefix };
        let (flow, rx) = Flow::ending_with(sink, tunnel.flows(), Some(&done));
        flow.send(tunnel.conn(), datagram.payload);
        flows.insert(datagram.address.to_vec(), (flow.clone(), tunnel.clone()));
        let span = info_span!("flow", target = %datagram.target, flow = tracing::field::Empty);
        let opened = async move {
            flow::open(tunnel, flow, rx, header, open_timeout).await;
            drop(hold);
        };
        tracker.spawn(opened.instrument(span));
    }
    done.cancel();
    debug!("UDP association closed");
}
