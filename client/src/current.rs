//! [`CurrentTunnel`]: the client's one handle for "the tunnel up now", which the reconnect loop
//! replaces. Forwards and proxies hold it as their [`Upstream`]: each connection or flow asks it
//! for the tunnel of the moment, and gets [`OpenError::TunnelGone`] while reconnecting, or
//! [`OpenError::Busy`] past the server's per-client stream limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use wmproxy_tunnel::relay::{Limits, Meter, RelayStats};
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Tunnel, Upstream};
use wmproxy_wire::{OpenStream, Target};

/// The tunnel up now, if any. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CurrentTunnel {
    now: watch::Receiver<Option<Arc<Tunnel>>>,
    /// Time for a stream's answer.
    open_timeout: Duration,
}

/// Installs and withdraws the current tunnel (the reconnect loop's side).
pub(crate) type Installer = watch::Sender<Option<Arc<Tunnel>>>;

impl CurrentTunnel {
    /// No tunnel yet; the [`Installer`] puts one in place.
    pub(crate) fn new(open_timeout: Duration) -> (Installer, Self) {
        let (installer, now) = watch::channel(None);
        (installer, Self { now, open_timeout })
    }

    /// The tunnel up now.
    pub fn get(&self) -> Option<Arc<Tunnel>> {
        self.now.borrow().clone()
    }

    /// Carries one local connection of `peer` to `target` through the tunnel up now: the bytes
    /// are pipelined behind the header, and relayed until both directions end, counted in
    /// `meter` as they pass.
    pub async fn carry(
        &self,
        tcp: TcpStream,
        (peer, target): (SocketAddr, Target),
        meter: &dyn Meter,
    ) -> Result<RelayStats, OpenError> {
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let _permit = tunnel.stream_permit().ok_or(OpenError::Busy)?;
        let header = OpenStream::Connect { target, peer_addr: peer };
        let limits = Limits { meter: Some(meter), ..Limits::default() };
        Ok(tunnel.open_and_relay(&header, tcp, (self.open_timeout, &limits)).await?)
    }
}

impl Upstream for CurrentTunnel {
    type By = ();

    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<()>, OpenError> {
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let permit = tunnel.stream_permit().ok_or(OpenError::Busy)?;
        let header = OpenStream::Connect { target: ask.target()?, peer_addr: peer };
        let (send, recv) = tunnel.open_confirmed(&header, self.open_timeout).await?;
        Ok(Opened { send, recv, by: (), hold: vec![Box::new(permit)] })
    }

    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        let tunnel = self.get().ok_or(OpenError::TunnelGone)?;
        let header = OpenStream::UdpConnect { target: ask.target()?, peer_addr: peer };
        let permit = tunnel.flow_permit().ok_or(OpenError::Busy)?;
        Ok(FlowRoute { tunnel, header, ends_with: None, hold: vec![Box::new(permit)], limit: None })
    }
}
