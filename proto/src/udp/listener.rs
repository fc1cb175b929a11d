//! A UDP port shared by many users (a server's public port, a client's UDP forward): each new
//! user address starts a flow through the current tunnel; later packets join it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use super::flow;
use super::stats::UdpStats;
use super::table::{Flow, FlowTable, Sink};
use crate::wire::OpenStream;
use crate::wire::udp::MAX_PACKET_LEN;

/// How often entries of ended flows are dropped from a listener's address map.
const PURGE_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed receive so that a persistent error does not spin.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What a flow holds until it ends: limit permits, active-connection counters.
pub type FlowGuards = Vec<Box<dyn Send>>;

/// Where a new flow goes.
pub struct Route {
    /// The tunnel it rides.
    pub conn: Connection,
    /// That tunnel's flow table.
    pub table: Arc<FlowTable>,
    /// The header that opens it.
    pub header: OpenStream,
    /// Also ends the flow when cancelled (its backend stopped being healthy).
    pub ends_with: Option<CancellationToken>,
    /// Held until the flow ends.
    pub guards: FlowGuards,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("header", &self.header).field("guards", &self.guards.len()).finish()
    }
}

/// Why a packet could not start a flow (each is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No tunnel right now, or no healthy backend.
    NoTunnel,
    /// A flow limit is reached.
    FlowLimit,
}

/// What a listener needs to start flows.
pub trait FlowSource: Send + 'static {
    /// Where a new flow from `peer` goes, with the permits it holds.
    fn route(&self, peer: SocketAddr) -> Result<Route, NoRoute>;
}

/// Permits from each semaphore, or `None` if any is exhausted.
pub fn permits(semaphores: &[&Arc<tokio::sync::Semaphore>]) -> Option<FlowGuards> {
    let mut guards: FlowGuards = Vec::with_capacity(semaphores.len());
    for s in semaphores {
        let permit: OwnedSemaphorePermit = Arc::clone(s).try_acquire_owned().ok()?;
        guards.push(Box::new(permit));
    }
    Some(guards)
}

/// Receives on `socket` until `cancel`, starting one flow per user address. Flow tasks run
/// on `tracker`, each under a `flow{peer, flow}` span; `open_timeout` bounds opening a flow
/// stream and waiting for its answer. Packets that cannot start a flow are dropped and counted
/// in `stats`.
pub async fn serve(
    socket: Arc<UdpSocket>,
    source: impl FlowSource,
    stats: Arc<UdpStats>,
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
    let mut flows: HashMap<SocketAddr, (Arc<Flow>, Connection)> = HashMap::new();
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
        let (n, peer) = match received {
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
        if let Some((flow, conn)) = flows.get(&peer)
            && !flow.done().is_cancelled()
        {
            flow.send(conn, payload);
            continue;
        }
        let route = match source.route(peer) {
            Ok(route) => route,
            Err(NoRoute::NoTunnel) => {
                UdpStats::bump(&stats.dropped_no_tunnel);
                continue;
            }
            Err(NoRoute::FlowLimit) => {
                debug!(%peer, "UDP flow limit reached; dropping the packet");
                UdpStats::bump(&stats.dropped_flow_limit);
                continue;
            }
        };
        let Route { conn, table, header, ends_with, guards } = route;
        if flows.len() >= purge_at {
            flows.retain(|_, (f, _)| !f.done().is_cancelled());
            purge_at = (flows.len() * 2).max(64);
        }
        let (flow, rx) = Flow::ending_with(Sink::Peer { socket: socket.clone(), peer }, &table, ends_with.as_ref());
        // Not confirmed yet: the packet is queued to follow the header on the stream.
        flow.send(&conn, payload);
        flows.insert(peer, (flow.clone(), conn.clone()));
        let span = info_span!("flow", %peer, flow = tracing::field::Empty);
        tracker.spawn(
            async move {
                flow::open(conn, table, flow, rx, header, open_timeout).await;
                drop(guards);
            }
            .instrument(span),
        );
    }
    for (flow, _) in flows.values() {
        flow.done().cancel();
    }
}
