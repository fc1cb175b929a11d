//! The server's proxies: SOCKS5 and HTTP front-ends (`wmproxy_proto::proxy`) whose
//! connections leave from a client's network (`via`). The client dials each target under its
//! own egress policy (`ProxyConnect`).

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wmproxy_config::{Proxy, ProxyType};
use wmproxy_proto::datastream::{self, DataStreamError};
use wmproxy_proto::proxy::{self as front, ProxyKind, ProxySettings, UdpRoute, Upstream};
use wmproxy_proto::udp::FlowTable;
use wmproxy_proto::wire::OpenStream;

use crate::server::Shared;

/// Serves one configured proxy until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, proxy: Proxy, shared: Arc<Shared>, shutdown: CancellationToken) {
    let kind = match proxy.kind {
        ProxyType::Socks5 => ProxyKind::Socks5,
        ProxyType::Http => ProxyKind::Http,
    };
    let settings = ProxySettings::new(kind, proxy.credential_pair(), proxy.handshake_timeout);
    let via = proxy.via.clone().unwrap_or_default();
    let tracker = shared.tracker.clone();
    let grace = shared.config().limits.drain_grace();
    front::serve(listener, settings, Arc::new(ThroughClient { shared, via }), tracker, (shutdown, grace)).await;
}

/// Targets leave from the client `via` (or from a client serving the group `via`), if it is
/// connected.
struct ThroughClient {
    shared: Arc<Shared>,
    via: String,
}

impl ThroughClient {
    /// The tunnel (and its flow table) of the client `via`, or of a healthy backend's client
    /// when `via` names a group.
    fn tunnel(&self, peer: SocketAddr) -> Option<(Connection, Arc<FlowTable>)> {
        if let Some(session) = self.shared.sessions.get(&self.via) {
            return Some((session.conn.clone(), session.flows.clone()));
        }
        let backend = self.shared.groups.get(&self.via)?.pick(peer.ip(), &[])?;
        Some((backend.conn.clone(), backend.flows.clone()))
    }
}

impl Upstream for ThroughClient {
    async fn open(&self, target: String, peer: SocketAddr) -> Result<(SendStream, RecvStream), DataStreamError> {
        let tunnel = self.tunnel(peer);
        let (conn, _) = tunnel.ok_or_else(|| DataStreamError::Tunnel(format!("`{}` is not connected", self.via)))?;
        let header = OpenStream::ProxyConnect { target, peer_addr: peer };
        datastream::open_confirmed(&conn, &header, self.shared.config().limits.stream_open_timeout()).await
    }

    fn udp(&self, peer: SocketAddr) -> Option<UdpRoute> {
        let (conn, table) = self.tunnel(peer)?;
        Some(UdpRoute { conn, table, header: |target, peer_addr| OpenStream::ProxyUdpConnect { target, peer_addr } })
    }
}
