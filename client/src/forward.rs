//! Local forwards: a local TCP listener or UDP port whose traffic leaves from the server
//! toward a target, through the [`CurrentTunnel`]; or a local TCP port whose connections become
//! WebSocket connections to a URL. Each forward counts its connections (a UDP forward: its
//! flows) and their bytes in its [`ListenerStats`]; TCP and WebSocket connections also get an
//! access log line (`wmproxy::access`).

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::listener::{ListenerStats, Refusal, access_log};
use wmproxy_tunnel::relay::{Meter, RelayStats, Tally};
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_tunnel::{Ask, OpenError};
use wmproxy_wire::Target;

use crate::current::CurrentTunnel;
use crate::local::STREAM_OPEN_TIMEOUT;

/// Accepts local connections until `shutdown`; each rides the current tunnel, if any (without
/// one it is closed at once rather than left hanging). Each is counted in `stats` (bytes as
/// they pass) and gets an access log line.
pub async fn serve_tcp(
    listener: TcpListener,
    (target, stats): (Target, Arc<ListenerStats>),
    current: CurrentTunnel,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let (current, target, stats) = (current.clone(), target.clone(), stats.clone());
        let span = info_span!("stream", %peer);
        tracker.spawn(
            async move {
                let (_open, started, tally) = (stats.open(), Instant::now(), Tally::default());
                let carried = current.carry(tcp, (peer, target.clone()), &(&tally, &*stats)).await;
                let result = match carried {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => {
                        // A relay that failed after the stream was set up carried the connection.
                        if !matches!(e, OpenError::Failed(DataStreamError::Relay(_))) {
                            stats.refused(Refusal::of(&e));
                        }
                        match &e {
                            OpenError::TunnelGone => warn!("no tunnel to the server right now; connection closed"),
                            _ => debug!(error = %e, side = %e.side(), "forward ended without data or aborted"),
                        }
                        e.to_string()
                    }
                };
                access_log(&stats, (peer, target.as_str()), started, tally.stats(), &result);
            }
            .instrument(span),
        );
    }
}

/// Serves a UDP forward until `shutdown`: each local user address becomes a flow through the
/// current tunnel, counted in `counted` as a connection with its bytes. Without a tunnel, or
/// over `max_udp_flows`, packets are dropped and counted.
pub async fn serve_udp(
    socket: UdpSocket,
    (target, counted): (Target, Arc<ListenerStats>),
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
        (stats, Some(counted)),
        STREAM_OPEN_TIMEOUT,
        tracker,
        shutdown,
    )
    .await;
}

/// Serves a `ws` forward until `shutdown`: each local connection becomes a WebSocket
/// connection to `url` (`ws://host:port/path`), its bytes carried as binary messages, counted
/// in `stats` when the connection ends.
pub async fn serve_ws(
    listener: TcpListener,
    (url, stats): (String, Arc<ListenerStats>),
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let authority = url.strip_prefix("ws://").unwrap_or(&url).split('/').next().unwrap_or_default().to_owned();
    let addr = if authority.contains(':') { authority } else { format!("{authority}:80") };
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let (url, addr, stats) = (url.clone(), addr.clone(), stats.clone());
        let span = info_span!("ws_forward", %peer);
        tracker.spawn(
            async move {
                let (_open, started) = (stats.open(), Instant::now());
                let connected = async {
                    let remote = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
                    let _ = remote.set_nodelay(true);
                    let config = Some(wmproxy_frontend::wsbridge::config());
                    tokio_tungstenite::client_async_with_config(url.as_str(), remote, config)
                        .await
                        .map_err(|e| e.to_string())
                };
                let (carried, result) = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, connected).await {
                    Ok(Ok((ws, _))) => {
                        let (from_ws, to_ws) = wmproxy_frontend::wsbridge::bridge(ws, tcp).await;
                        stats.passed(to_ws, from_ws);
                        (RelayStats { tcp_to_quic: to_ws, quic_to_tcp: from_ws }, "ok".to_owned())
                    }
                    Ok(Err(e)) => {
                        stats.refused(Refusal::Unreachable);
                        warn!(error = %e, "WebSocket connection failed");
                        (RelayStats::default(), format!("WebSocket connection failed: {e}"))
                    }
                    Err(_) => {
                        stats.refused(Refusal::Timeout);
                        warn!("WebSocket connection timed out");
                        (RelayStats::default(), "WebSocket connection timed out".to_owned())
                    }
                };
                access_log(&stats, (peer, url.as_str()), started, carried, &result);
            }
            .instrument(span),
        );
    }
}
