//! A UDP port shared by many users (a server's public port, a client's UDP forward): each new
//! user address starts a flow through the current tunnel; later packets join it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};
use wmproxy_wire::udp::MAX_PACKET_LEN;

use super::flow;
use super::stats::UdpStats;
use super::table::{Flow, Sink};
use crate::Tunnel;
use crate::listener::{ListenerStats, Refusal};
use crate::upstream::{Ask, FlowRoute, OpenError, Upstream};

/// How often entries of ended flows are dropped from a listener's address map.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed receive so that a persistent error does not spin.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Receives on `socket` until `cancel`, starting one flow per user address on the route
/// `upstream` gives for `ask`. Flow tasks run on `tracker`, each under a `flow{peer, flow}`
/// span; `open_timeout` bounds opening a flow stream and waiting for its answer. Packets that
/// cannot start a flow are dropped and counted in `stats`. With `counted` (a forward's
/// listener), each flow is counted there as a connection, open while the flow lives, with its
/// bytes as they pass.
pub async fn serve(
    socket: Arc<UdpSocket>,
    upstream: &impl Upstream,
    ask: Ask,
    (stats, counted): (Arc<UdpStats>, Option<Arc<ListenerStats>>),
    open_timeout: Duration,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    // Replies go out with `try_send_to`, which tokio refuses until the reactor has seen the
    // socket writable once.
    if let Err(e) = socket.writable().await {
        debug!(error = %e, "socket unusable");
        return;
    }
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    let mut flows: HashMap<SocketAddr, (Arc<Flow>, Arc<Tunnel>)> = HashMap::new();
    // Ended flows stay in the map until a purge; purging also when the map has doubled keeps
    // it within twice the live flows.
    let mut purge_at = 64;
    let mut purge = tokio::time::interval(PURGE_INTERVAL);
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => break,
            _ = purge.tick() => {
                flows.retain(|_, (f, _)| !f.done().is_cancelled());
                continue;
            }
            received = socket.recv_from(&mut buf) => received,
        };
        let (n, from) = match received {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "receive failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(RECV_ERROR_BACKOFF) => continue,
                }
            }
        };
        let payload = buf.get(..n).unwrap_or_default();
        // Flows are keyed and answered by the address as received; a new flow's user is shown
        // and counted by its canonical form (IPv4 on a dual-stack socket).
        if let Some((flow, tunnel)) = flows.get(&from)
            && !flow.done().is_cancelled()
        {
            flow.send(tunnel.conn(), payload);
            continue;
        }
        let peer = crate::users::canonical(from);
        let route = match upstream.flow(peer, ask.clone()) {
            Ok(route) => route,
            Err(OpenError::Busy) => {
                debug!(%peer, "UDP flow limit reached; dropping the packet");
                UdpStats::bump(&stats.dropped_flow_limit);
                if let Some(counted) = &counted {
                    counted.refused(Refusal::Busy);
                }
                continue;
            }
            Err(_) => {
                UdpStats::bump(&stats.dropped_no_tunnel);
                if let Some(counted) = &counted {
                    counted.refused(Refusal::NoTunnel);
                }
                continue;
            }
        };
        let FlowRoute { tunnel, header, ends_with, hold, limit } = route;
        if flows.len() >= purge_at {
            flows.retain(|_, (f, _)| !f.done().is_cancelled());
            purge_at = (flows.len() * 2).max(64);
        }
        let sink = Sink::Peer { socket: socket.clone(), peer: from };
        let (flow, rx) = Flow::ending_with(sink, tunnel.flows(), ends_with.as_ref());
        if let Some(limit) = limit {
            flow.limit_to(limit);
        }
        let open = counted.as_ref().map(|counted| {
            flow.metered(counted.clone());
            counted.open()
        });
        // Not confirmed yet: the packet is queued to follow the header on the stream.
        flow.send(tunnel.conn(), payload);
        flows.insert(from, (flow.clone(), tunnel.clone()));
        let span = info_span!("flow", %peer, flow = tracing::field::Empty);
        tracker.spawn(
            async move {
                flow::open(tunnel, flow, rx, header, open_timeout).await;
                drop((hold, open));
            }
            .instrument(span),
        );
    }
    for (flow, _) in flows.values() {
        flow.done().cancel();
    }
}
