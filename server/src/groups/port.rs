//! A TCP or UDP group's public port. TCP: each user connection goes to the backend the group
//! picks (the next one when a dial fails). UDP: each new user address starts a flow on the
//! picked backend, which it keeps while that backend stays healthy.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_config::GroupKind;
use wmproxy_tunnel::accept::after_grace;
use wmproxy_tunnel::relay::{Limits, relay_within};
use wmproxy_tunnel::{Ask, Upstream, transport};

use super::group::Group;
use crate::runtime::Serving;
use crate::sockets::bind_reusable;

/// A group's public socket.
#[derive(Debug)]
pub(crate) enum GroupSocket {
    /// A TCP group's listener.
    Tcp(TcpListener),
    /// A UDP group's socket.
    Udp(UdpSocket),
}

impl GroupSocket {
    /// Where it listens, and over which protocol.
    pub(crate) fn describe(&self) -> (&'static str, Option<SocketAddr>) {
        match self {
            Self::Tcp(l) => ("tcp", l.local_addr().ok()),
            Self::Udp(s) => ("udp", s.local_addr().ok()),
        }
    }
}

/// Binds the public socket of a group of `kind` on `public_bind`; `None` for an HTTP group,
/// which is served on the vhost or HTTPS port by its routes.
pub(crate) fn bind(public_bind: IpAddr, kind: &GroupKind) -> io::Result<Option<GroupSocket>> {
    match kind {
        GroupKind::Tcp { remote_port } => {
            bind_reusable(SocketAddr::new(public_bind, *remote_port)).map(|l| Some(GroupSocket::Tcp(l)))
        }
        GroupKind::Udp { remote_port } => transport::bind_udp(SocketAddr::new(public_bind, *remote_port))
            .and_then(UdpSocket::from_std)
            .map(|s| Some(GroupSocket::Udp(s))),
        GroupKind::Http { .. } | GroupKind::Https { .. } => Ok(None),
    }
}

/// Serves `socket` for `group` until `stop` (shutdown, or a reload removed or moved the group).
pub(crate) async fn serve(group: Arc<Group>, socket: GroupSocket, serving: Serving, stop: CancellationToken) {
    match socket {
        GroupSocket::Tcp(listener) => {
            while let Some((tcp, peer, permit)) =
                wmproxy_tunnel::accept::next_user(&listener, &stop, &serving.users).await
            {
                let span = info_span!("stream", group = %group.name, %peer, backend = tracing::field::Empty);
                let (group, served, stop) = (group.clone(), serving.clone(), stop.clone());
                serving.runtime.tracker.spawn(
                    async move {
                        let _permit = permit;
                        serve_user(group, tcp, peer, served, stop).await;
                    }
                    .instrument(span),
                );
            }
        }
        GroupSocket::Udp(socket) => {
            let (stats, timeout, tracker) =
                (serving.udp_stats.clone(), serving.open_timeout, serving.runtime.tracker.clone());
            let socket = Arc::new(socket);
            wmproxy_tunnel::udp::listener::serve(socket, &*group, Ask::Service, (stats, None), timeout, tracker, stop)
                .await;
        }
    }
}

/// Carries one user connection to a backend. With none left, the user's connection is closed
/// at once. Once the port is stopped, the connection gets the drain grace period.
async fn serve_user(group: Arc<Group>, tcp: TcpStream, peer: SocketAddr, serving: Serving, stop: CancellationToken) {
    let opened = match group.open(peer, Ask::Service).await {
        Ok(opened) => opened,
        Err(e) => {
            serving.metrics.open_failed(e.side());
            return debug!(error = %e, side = %e.side(), "no backend could take the connection; closing it");
        }
    };
    let counted = serving.metrics.stream(&opened.by.client, &opened.by.service);
    let limits = Limits { meter: Some(&counted), ..Limits::default() };
    tokio::select! {
        relayed = relay_within(tcp, (opened.send, opened.recv), &limits) => match relayed {
            Ok(stats) => {
                debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished");
            }
            Err(e) => debug!(error = %e, "relay ended"),
        },
        () = after_grace(&stop, serving.grace) => {
            debug!("the group's port stopped and the grace period is over; connection closed");
        }
    }
    drop(opened.hold);
}
