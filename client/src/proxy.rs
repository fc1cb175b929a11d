//! The client's local proxies: SOCKS5 and HTTP front-ends (`wmproxy_proto::proxy`) whose
//! targets become `Connect` streams through the current tunnel; the server dials them under
//! its egress policy.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wmproxy_config::{Proxy, ProxyType};
use wmproxy_proto::datastream::{self, DataStreamError};
use wmproxy_proto::proxy::{self as front, ProxyKind, ProxySettings, UdpRoute, Upstream};
use wmproxy_proto::wire::OpenStream;

use crate::expose::STREAM_OPEN_TIMEOUT;
use crate::forward::Tunnel;

/// Serves one configured proxy until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tunnel: watch::Receiver<Option<Tunnel>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let upstream = Arc::new(ThroughServer { tunnel });
    // On shutdown, connections in flight get as long as the client waits for its tasks.
    let grace = crate::client::DRAIN_TIMEOUT;
    front::serve(listener, settings(&proxy), upstream, tracker, (shutdown, grace)).await;
}

/// The front-end settings of a configured proxy.
fn settings(proxy: &Proxy) -> ProxySettings {
    let kind = match proxy.kind {
        ProxyType::Socks5 => ProxyKind::Socks5,
        ProxyType::Http => ProxyKind::Http,
    };
    ProxySettings::new(kind, proxy.credential_pair(), proxy.handshake_timeout)
}

/// Targets leave from the server: a `Connect` stream through the current tunnel.
struct ThroughServer {
    tunnel: watch::Receiver<Option<Tunnel>>,
}

impl Upstream for ThroughServer {
    async fn open(&self, target: String, peer: SocketAddr) -> Result<(SendStream, RecvStream), DataStreamError> {
        let conn = self.tunnel.borrow().as_ref().map(|t| t.conn.clone());
        let conn = conn.ok_or_else(|| DataStreamError::Tunnel("no tunnel to the server right now".into()))?;
        let header = OpenStream::Connect { target, peer_addr: peer };
        datastream::open_confirmed(&conn, &header, STREAM_OPEN_TIMEOUT).await
    }

    fn udp(&self, _peer: SocketAddr) -> Option<UdpRoute> {
        self.tunnel.borrow().as_ref().map(|t| UdpRoute {
            conn: t.conn.clone(),
            table: t.flows.clone(),
            header: |target, peer_addr| OpenStream::UdpConnect { target, peer_addr },
        })
    }
}
