//! A group's public port. TCP: each user connection goes to the backend the policy picks; when
//! a dial fails before any byte was relayed, the next eligible backend is tried. UDP: each new
//! user address starts a flow on the picked backend, which it keeps while that backend stays
//! healthy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_proto::datastream::{self, DataStreamError};
use wmproxy_proto::relay::relay;
use wmproxy_proto::wire::OpenStream;

use wmproxy_proto::udp::listener::{self, FlowSource, NoRoute, Route};

use super::{ActiveGuard, Group};
use crate::server::Shared;

/// Accepts users on the group's port until `stop` (shutdown, or a reload removed or moved the
/// group).
pub(crate) async fn accept_users(
    group: Arc<Group>,
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &stop).await {
        let span = info_span!("stream", group = %group.name, %peer, backend = tracing::field::Empty);
        shared.tracker.spawn(serve_user(group.clone(), tcp, peer, shared.clone(), stop.clone()).instrument(span));
    }
}

/// Carries one user connection to a backend. With none left, the user's connection is closed
/// at once. Once the port is stopped, the connection gets the drain grace period.
async fn serve_user(group: Arc<Group>, tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let limits = shared.config().limits.clone();
    match group.open(peer, limits.stream_open_timeout()).await {
        Ok(opened) => {
            let counted = shared.metrics.stream(&opened.backend.client, &opened.backend.service);
            tokio::select! {
                relayed = relay(tcp, opened.send, opened.recv) => match relayed {
                    Ok(stats) => {
                        counted.carried(&stats);
                        debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished");
                    }
                    Err(e) => debug!(error = %e, "relay ended"),
                },
                () = wmproxy_proto::shutdown::after_grace(&stop, limits.drain_grace()) => {
                    debug!("the group's port stopped and the grace period is over; connection closed");
                }
            }
        }
        Err(tried) => debug!(tried, "no backend could take the connection; closing it"),
    }
}

/// A data stream to the backend a group picked, holding that backend's stream permit and
/// active count while it lives.
#[derive(Debug)]
pub(crate) struct BackendStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub backend: Arc<super::Backend>,
    pub hold: (OwnedSemaphorePermit, ActiveGuard),
}

impl Group {
    /// Opens a data stream for one connection of `peer` on a backend, trying up to
    /// `1 + retries` of them; passive health learns each result. Records the backend on the
    /// current span. `Err` carries how many backends were tried: `0` means none was eligible.
    pub(crate) async fn open(&self, peer: SocketAddr, timeout: Duration) -> Result<BackendStream, usize> {
        let mut tried = Vec::new();
        for _ in 0..=self.retries() {
            let Some(backend) = self.pick(peer.ip(), &tried) else {
                break;
            };
            tried.push(backend.id);
            let Ok(permit) = backend.streams.clone().try_acquire_owned() else {
                debug!(client = %backend.client, "backend's client at its stream limit; trying another");
                continue;
            };
            let active = backend.begin();
            let header = OpenStream::Expose { service: backend.service.clone(), peer_addr: peer };
            match datastream::open_confirmed(&backend.conn, &header, timeout).await {
                Ok((send, recv)) => {
                    backend.dial_succeeded();
                    let name = format_args!("{}/{}", backend.client, backend.service);
                    tracing::Span::current().record("backend", tracing::field::display(name));
                    return Ok(BackendStream { send, recv, backend, hold: (permit, active) });
                }
                Err(e) => {
                    if !matches!(e, DataStreamError::Refused(wmproxy_proto::wire::OpenResult::Busy)) {
                        backend.dial_failed();
                    }
                    debug!(client = %backend.client, service = %backend.service, error = %e, "backend failed; trying another");
                }
            }
        }
        Err(tried.len())
    }
}

/// The flow source of a UDP group's port: a flow rides the tunnel of the backend the policy
/// picks, within that client's and the server's flow limits, and ends if the backend stops
/// being healthy.
#[derive(Debug)]
pub(crate) struct GroupPort {
    pub group: Arc<Group>,
    pub shared: Arc<Shared>,
}

impl FlowSource for GroupPort {
    fn route(&self, peer: SocketAddr) -> Result<Route, NoRoute> {
        let backend = self.group.pick(peer.ip(), &[]).ok_or(NoRoute::NoTunnel)?;
        let mut guards =
            listener::permits(&[&backend.udp_permits, &self.shared.udp_flows]).ok_or(NoRoute::FlowLimit)?;
        guards.push(Box::new(backend.begin()));
        Ok(Route {
            conn: backend.conn.clone(),
            table: backend.flows.clone(),
            header: OpenStream::UdpExpose { service: backend.service.clone(), peer_addr: peer },
            ends_with: Some(backend.flows_token()),
            guards,
        })
    }
}
