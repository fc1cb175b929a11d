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

/// Permits a flow holds until it ends (for example one per-client and one global).
pub type FlowPermits = Vec<OwnedSemaphorePermit>;

/// What a listener needs to start flows.
pub trait FlowSource: Send + 'static {
    /// The tunnel new flows ride, with its flow table; `None` drops the packet.
    fn tunnel(&self) -> Option<(Connection, Arc<FlowTable>)>;
    /// Permits for one more flow; `None` when a limit is reached (the packet is dropped).
    fn permits(&self) -> Option<FlowPermits>;
    /// The header that opens a flow for `peer`.
    fn header(&self, peer: SocketAddr) -> OpenStream;
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
        let Some((conn, table)) = source.tunnel() else {
            UdpStats::bump(&stats.dropped_no_tunnel);
            continue;
        };
        let Some(permits) = source.permits() else {
            debug!(%peer, "UDP flow limit reached; dropping the packet");
            UdpStats::bump(&stats.dropped_flow_limit);
            continue;
        };
        if flows.len() >= purge_at {
            flows.retain(|_, (f, _)| !f.done().is_cancelled());
            purge_at = (flows.len() * 2).max(64);
        }
        let (flow, rx) = Flow::new(Sink::Peer { socket: socket.clone(), peer }, &table);
        // Not confirmed yet: the packet is queued to follow the header on the stream.
        flow.send(&conn, payload);
        flows.insert(peer, (flow.clone(), conn.clone()));
        let header = source.header(peer);
        let span = info_span!("flow", %peer, flow = tracing::field::Empty);
        tracker.spawn(
            async move {
                flow::open(conn, table, flow, rx, header, open_timeout).await;
                drop(permits);
            }
            .instrument(span),
        );
    }
    for (flow, _) in flows.values() {
        flow.done().cancel();
    }
}
