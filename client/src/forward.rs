//! Local forwards: a local TCP listener or UDP port whose traffic leaves from the server
//! toward a target.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::Connection;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_proto::datastream;
use wmproxy_proto::udp::listener::{self, FlowSource, NoRoute, Route};
use wmproxy_proto::udp::{FlowTable, UdpStats};
use wmproxy_proto::wire::OpenStream;

use crate::expose::STREAM_OPEN_TIMEOUT;

/// The current tunnel, as forwards see it: `None` while reconnecting.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The connection.
    pub conn: Connection,
    /// Its UDP flows.
    pub flows: Arc<FlowTable>,
}

/// Accepts local connections until `shutdown`; each rides the current tunnel, if any (without
/// one it is closed at once rather than left hanging).
pub async fn serve_tcp(
    listener: TcpListener,
    target: String,
    tunnel: watch::Receiver<Option<Tunnel>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &shutdown).await {
        let Some(conn) = tunnel.borrow().as_ref().map(|t| t.conn.clone()) else {
            warn!(%peer, "no tunnel to the server right now; closing the connection");
            continue;
        };
        let header = OpenStream::Connect { target: target.clone(), peer_addr: peer };
        let span = info_span!("stream", %peer);
        tracker.spawn(
            async move {
                match datastream::open_and_relay(&conn, &header, tcp, STREAM_OPEN_TIMEOUT).await {
                    Ok(stats) => debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "forward finished"),
                    Err(e) => debug!(error = %e, "forward ended without data or aborted"),
                }
            }
            .instrument(span),
        );
    }
}

/// Serves a UDP forward until `shutdown`: each local user address becomes a flow through the
/// current tunnel. Without a tunnel, or over `max_udp_flows`, packets are dropped and counted.
pub async fn serve_udp(
    socket: UdpSocket,
    target: String,
    tunnel: watch::Receiver<Option<Tunnel>>,
    permits: Arc<Semaphore>,
    stats: Arc<UdpStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let source = UdpForward { target, tunnel, permits };
    listener::serve(Arc::new(socket), source, stats, STREAM_OPEN_TIMEOUT, tracker, shutdown).await;
}

struct UdpForward {
    target: String,
    tunnel: watch::Receiver<Option<Tunnel>>,
    permits: Arc<Semaphore>,
}

impl FlowSource for UdpForward {
    fn route(&self, peer: SocketAddr) -> Result<Route, NoRoute> {
        let (conn, table) =
            self.tunnel.borrow().as_ref().map(|t| (t.conn.clone(), t.flows.clone())).ok_or(NoRoute::NoTunnel)?;
        let guards = listener::permits(&[&self.permits]).ok_or(NoRoute::FlowLimit)?;
        let header = OpenStream::UdpConnect { target: self.target.clone(), peer_addr: peer };
        Ok(Route { conn, table, header, ends_with: None, guards })
    }
}

/// Serves a `ws` forward until `shutdown`: each local connection becomes a WebSocket
/// connection to `url` (`ws://host:port/path`), its bytes carried as binary messages.
pub async fn serve_ws(listener: TcpListener, url: String, tracker: TaskTracker, shutdown: CancellationToken) {
    let authority = url.strip_prefix("ws://").unwrap_or(&url).split('/').next().unwrap_or_default().to_owned();
    let addr = if authority.contains(':') { authority } else { format!("{authority}:80") };
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &shutdown).await {
        let (url, addr) = (url.clone(), addr.clone());
        let span = info_span!("ws_forward", %peer);
        tracker.spawn(
            async move {
                let connected = async {
                    let remote = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                    let _ = remote.set_nodelay(true);
                    tokio_tungstenite::client_async(url.as_str(), remote).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(STREAM_OPEN_TIMEOUT, connected).await {
                    Ok(Ok((ws, _))) => {
                        let (from_ws, to_ws) = wmproxy_proto::wsbridge::bridge(ws, tcp).await;
                        debug!(from_ws, to_ws, "WebSocket forward finished");
                    }
                    Ok(Err(e)) => warn!(error = %e, "WebSocket connection failed"),
                    Err(_) => warn!("WebSocket connection timed out"),
                }
            }
            .instrument(span),
        );
    }
}
