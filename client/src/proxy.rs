//! The client's local proxies: SOCKS5 and HTTP front-ends ([`wmproxy_frontend::proxy`]) whose
//! upstream is the [`CurrentTunnel`]: each target becomes a `Connect` stream, which the server
//! dials under its egress policy.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wmproxy_config::{Proxy, ProxyType};
use wmproxy_frontend::proxy::{self as front, ProxyKind, ProxySettings};
use wmproxy_tunnel::listener::ListenerStats;
use wmproxy_tunnel::udp::UdpStats;

use crate::current::CurrentTunnel;

/// Serves one configured proxy until `shutdown`; then its connections get `grace`. Its
/// connections are counted in `counted`.
pub async fn serve(
    listener: TcpListener,
    (proxy, counted): (Proxy, Arc<ListenerStats>),
    current: CurrentTunnel,
    (stats, tracker): (Arc<UdpStats>, TaskTracker),
    (shutdown, grace): (CancellationToken, std::time::Duration),
) {
    let kind = match proxy.kind {
        ProxyType::Socks5 => ProxyKind::Socks5,
        ProxyType::Http => ProxyKind::Http,
    };
    let settings = ProxySettings::new(kind, proxy.credential_pair(), proxy.handshake_timeout, stats).counted(counted);
    front::serve(listener, settings, Arc::new(current), tracker, (shutdown, grace)).await;
}
