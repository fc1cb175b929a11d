//! The server's proxies: SOCKS5 and HTTP front-ends ([`wmproxy_frontend::proxy`]) whose
//! connections leave from a client's network. [`Via`] is their upstream: the client the proxy's
//! `via` names (its live session, looked up per connection), or else the group of that name.
//! The client dials each target under its own egress policy (`ProxyConnect`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wmproxy_config::{ProxyType, ServerProxy};
use wmproxy_frontend::proxy::{self as front, ProxyKind, ProxySettings};
use wmproxy_tunnel::listener::ListenerStats;
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Tunnel, Upstream};
use wmproxy_wire::{Name, OpenStream};

use crate::groups::Groups;
use crate::runtime::Serving;
use crate::sessions::Sessions;
use crate::udp::UdpBudget;
use crate::upstream::flow_on;

/// Where a proxy's connections leave from.
#[derive(Debug)]
pub(crate) struct Via {
    /// The client (or group) name.
    pub name: Name,
    pub sessions: Arc<Sessions>,
    pub groups: Arc<Groups>,
    pub open_timeout: Duration,
    pub udp: UdpBudget,
}

impl Via {
    /// The live tunnel of the client `via` names, if it is connected.
    fn client(&self) -> Option<Arc<Tunnel>> {
        self.sessions.get(&self.name).map(|s| s.tunnel.clone())
    }
}

impl Upstream for Via {
    type By = ();

    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<()>, OpenError> {
        if let Some(tunnel) = self.client() {
            let header = OpenStream::ProxyConnect { target: ask.target()?, peer_addr: peer };
            return tunnel.open_held(&header, self.open_timeout, ()).await;
        }
        let group = self.groups.get(&self.name).ok_or(OpenError::TunnelGone)?;
        let opened = group.open(peer, ask).await?;
        Ok(Opened { send: opened.send, recv: opened.recv, by: (), hold: opened.hold })
    }

    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        if let Some(tunnel) = self.client() {
            let header = OpenStream::ProxyUdpConnect { target: ask.target()?, peer_addr: peer };
            return flow_on(&tunnel, &self.udp, header, None);
        }
        self.groups.get(&self.name).ok_or(OpenError::TunnelGone)?.flow(peer, ask)
    }
}

/// Serves one configured proxy until `stop`; then its connections get `grace`. What it
/// carries is counted in `stats`.
pub(crate) async fn serve(
    listener: TcpListener,
    (proxy, stats): (ServerProxy, Arc<ListenerStats>),
    via: Via,
    serving: Serving,
    stop: CancellationToken,
) {
    let kind = match proxy.proxy.kind {
        ProxyType::Socks5 => ProxyKind::Socks5,
        ProxyType::Http => ProxyKind::Http,
    };
    let udp_stats = via.udp.stats.clone();
    let settings = ProxySettings::new(kind, proxy.proxy.credential_pair(), proxy.proxy.handshake_timeout, udp_stats)
        .with_limits(serving.users.clone(), serving.silent.clone())
        .counted(stats);
    front::serve(listener, settings, Arc::new(via), serving.runtime.tracker, (stop, serving.grace)).await;
}
