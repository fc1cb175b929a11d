//! Local forwards: a local TCP listener or UDP port whose traffic leaves from the server
//! toward a target, through the [`CurrentTunnel`]; or a local TCP port whose connections become
//! WebSocket connections to a URL.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_tunnel::{Ask, OpenError};
use wmproxy_wire::Target;

use crate::current::CurrentTunnel;
use crate::expose::STREAM_OPEN_TIMEOUT;

/// Accepts local connections until `shutdown`; each rides the current tunnel, if any (without
/// one it is closed at once rather than left hanging).
pub async fn serve_tcp(
    listener: TcpListener,
    target: Target,
    current: CurrentTunnel,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let (current, target) = (current.clone(), target.clone());
        let span = info_span!("stream", %peer);
        tracker.spawn(
            async move {
                match current.carry(tcp, peer, target).await {
                    Ok(stats) => debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "forward finished"),
                    Err(OpenError::TunnelGone) => warn!("no tunnel to the server right now; connection closed"),
                    Err(e) => debug!(error = %e, side = %e.side(), "forward ended without data or aborted"),
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
    target: Target,
    current: CurrentTunnel,
    stats: Arc<UdpStats>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    wmproxy_tunnel::udp::listener::serve(
        socket,
        &current,
        Ask::Target(target),
        stats,
        STREAM_OPEN_TIMEOUT,
        tracker,
        shutdown,
    )
    .await;
}

/// Serves a `ws` forward until `shutdown`: each local connection becomes a WebSocket
/// connection to `url` (`ws://host:port/path`), its bytes carried as binary messages.
pub async fn serve_ws(listener: TcpListener, url: String, tracker: TaskTracker, shutdown: CancellationToken) {
    let authority = url.strip_prefix("ws://").unwrap_or(&url).split('/').next().unwrap_or_default().to_owned();
    let addr = if authority.contains(':') { authority } else { format!("{authority}:80") };
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let (url, addr) = (url.clone(), addr.clone());
        let span = info_span!("ws_forward", %peer);
        tracker.spawn(
            async move {
                let connected = async {
                    let remote = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                    let _ = remote.set_nodelay(true);
                    let config = Some(wmproxy_frontend::wsbridge::config());
                    tokio_tungstenite::client_async_with_config(url.as_str(), remote, config)
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(STREAM_OPEN_TIMEOUT, connected).await {
                    Ok(Ok((ws, _))) => {
                        let (from_ws, to_ws) = wmproxy_frontend::wsbridge::bridge(ws, tcp).await;
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
