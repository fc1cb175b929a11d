//! The server's side of [`wmproxy_tunnel::Upstream`]: the one place where a connection or a
//! flow becomes a data stream to a client ([`Tunnel::open_held`], [`flow_on`]), and [`ServiceUpstream`],
//! the upstream of one published service. A group is the other upstream
//! ([`crate::groups::Group`]); public ports, vhost and SNI routes and proxies hold one of the two.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use wmproxy_tunnel::bandwidth::Bandwidth;
use wmproxy_tunnel::relay::{Limits, Meter, RelayStats};
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Tunnel, Upstream};
use wmproxy_wire::{Name, OpenStream};

use crate::udp::UdpBudget;

/// Who took a connection: the client and its service (the metrics' and logs' labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The client.
    pub client: Name,
    /// Its service.
    pub service: Name,
}

/// The header of a data stream to `service` for `peer`: the service itself, or (for a proxy)
/// a target the client dials.
pub(crate) fn stream_header(ask: Ask, service: &Name, peer: SocketAddr) -> OpenStream {
    match ask {
        Ask::Service => OpenStream::Expose { service: service.clone(), peer_addr: peer },
        Ask::Target(target) => OpenStream::ProxyConnect { target, peer_addr: peer },
    }
}

/// The header of a UDP flow's stream, as [`stream_header`].
pub(crate) fn flow_header(ask: Ask, service: &Name, peer: SocketAddr) -> OpenStream {
    match ask {
        Ask::Service => OpenStream::UdpExpose { service: service.clone(), peer_addr: peer },
        Ask::Target(target) => OpenStream::ProxyUdpConnect { target, peer_addr: peer },
    }
}

/// Routes a new UDP flow onto `tunnel` with `header`, within the client's and the server's
/// flow limits; the flow also ends with `ends_with`.
pub(crate) fn flow_on(
    tunnel: &Arc<Tunnel>,
    budget: &UdpBudget,
    header: OpenStream,
    ends_with: Option<CancellationToken>,
) -> Result<FlowRoute, OpenError> {
    let mine = tunnel.flow_permit().ok_or(OpenError::Busy)?;
    let all = budget.permit().ok_or(OpenError::Busy)?;
    Ok(FlowRoute { tunnel: tunnel.clone(), header, ends_with, hold: vec![Box::new(mine), Box::new(all)], limit: None })
}

/// One published service of one client: the upstream of its public port, or of its routes.
#[derive(Debug, Clone)]
pub(crate) struct ServiceUpstream {
    tunnel: Arc<Tunnel>,
    served: Served,
    open_timeout: Duration,
    udp: UdpBudget,
    /// The service's bandwidth limit for what the server sends it (the users' bytes).
    limit: Option<Arc<Bandwidth>>,
}

impl ServiceUpstream {
    /// `service` of `client`, reached through `tunnel`.
    pub fn new(tunnel: Arc<Tunnel>, served: Served, open_timeout: Duration, udp: UdpBudget) -> Self {
        Self { tunnel, served, open_timeout, udp, limit: None }
    }

    /// Sends the users' bytes to it within `bytes_per_sec`, over all its connections and flows
    /// together.
    #[must_use]
    pub fn within(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.limit = bytes_per_sec.map(Bandwidth::new);
        self
    }

    /// Who serves it.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// The tunnel to its client.
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }

    /// Carries one user connection: opens a stream with the user's bytes pipelined behind the
    /// header (no round trip before they flow), and relays until both directions end. A failure
    /// after the stream was set up is [`OpenError::Failed`] with the relay's error. The bytes
    /// are counted in `meter` as they pass.
    pub async fn carry(&self, tcp: TcpStream, peer: SocketAddr, meter: &dyn Meter) -> Result<RelayStats, OpenError> {
        let header = stream_header(Ask::Service, &self.served.service, peer);
        let limits = Limits { bandwidth: self.limit.as_deref(), idle: None, meter: Some(meter) };
        self.tunnel.open_and_relay(&header, tcp, (self.open_timeout, &limits)).await
    }
}

impl Upstream for ServiceUpstream {
    type By = Served;

    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<Served>, OpenError> {
        let header = stream_header(ask, &self.served.service, peer);
        self.tunnel.open_held(&header, self.open_timeout, self.served.clone()).await
    }

    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        let route = flow_on(&self.tunnel, &self.udp, flow_header(ask, &self.served.service, peer), None)?;
        Ok(FlowRoute { limit: self.limit.clone(), ..route })
    }
}
