//! Public TCP and UDP ports of published services: binding one inside the client's allowance,
//! and serving its users until its [`PortHandle`] is dropped.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_config::PortAllowance;
use wmproxy_tunnel::accept::after_grace;
use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::{Ask, OpenError, Side, transport};
use wmproxy_wire::RegisterOutcome;

use crate::metrics::Refusal;
use crate::runtime::Serving;
use crate::sockets::bind_tcp;
use crate::upstream::ServiceUpstream;

/// How long a withdrawal waits for a listener task to drop its socket.
const LISTENER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A public port being served; dropping it stops the port at once (its live connections get
/// the drain grace period).
#[derive(Debug)]
pub(crate) struct PortHandle {
    stop: CancellationToken,
    /// The listener task (and, for UDP, its flows, which hold the socket).
    tasks: TaskTracker,
}

impl PortHandle {
    /// Waits (a bounded time) until the port's socket is closed, so it may be bound again.
    pub async fn closed(tasks: TaskTracker, service: &str) {
        tasks.close();
        if tokio::time::timeout(LISTENER_CLOSE_TIMEOUT, tasks.wait()).await.is_err() {
            warn!(%service, "a withdrawn service's listener is slow to close");
        }
    }

    /// The tasks to wait for after dropping the handle (see [`PortHandle::closed`]).
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }
}

impl Drop for PortHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds a public port for a service: the requested port (0: any) must be in `allowance`, and
/// so must the port actually bound. A refusal is the registration's answer.
fn bind_public<S>(
    (public_bind, requested): (IpAddr, u16),
    allowance: &PortAllowance,
    bind: impl FnOnce(SocketAddr) -> io::Result<S>,
    local_addr: impl FnOnce(&S) -> io::Result<SocketAddr>,
) -> Result<(S, u16), RegisterOutcome> {
    if requested != 0 && !allowance.allows(requested) {
        return Err(RegisterOutcome::PortNotAllowed { allowed: allowance.to_string() });
    }
    let socket = match bind(SocketAddr::new(public_bind, requested)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(RegisterOutcome::PortInUse),
        Err(e) => return Err(RegisterOutcome::Invalid(format!("cannot bind: {e}"))),
    };
    let bound = local_addr(&socket).map_err(|_| RegisterOutcome::Invalid("cannot read the bound port".into()))?.port();
    if !allowance.allows(bound) {
        // Port 0 let the system pick a port outside this client's allowance.
        return Err(RegisterOutcome::PortNotAllowed { allowed: allowance.to_string() });
    }
    Ok((socket, bound))
}

/// Binds and serves a public TCP port for `upstream`.
pub(crate) fn tcp(
    at: (IpAddr, u16),
    allowance: &PortAllowance,
    upstream: ServiceUpstream,
    serving: &Serving,
) -> Result<(PortHandle, u16), RegisterOutcome> {
    let (listener, port) = bind_public(at, allowance, bind_tcp, TcpListener::local_addr)?;
    let handle = PortHandle { stop: serving.runtime.listener_stop(), tasks: TaskTracker::new() };
    let span = info_span!("public", service = %upstream.served().service, port);
    let serve = accept_users(listener, upstream, serving.clone(), handle.stop.clone());
    serving.runtime.tracker.spawn(handle.tasks.track_future(serve.instrument(span)));
    Ok((handle, port))
}

/// Binds and serves a public UDP port for `upstream`: each user address becomes a flow.
pub(crate) fn udp(
    at: (IpAddr, u16),
    allowance: &PortAllowance,
    upstream: ServiceUpstream,
    serving: &Serving,
) -> Result<(PortHandle, u16), RegisterOutcome> {
    let bind = |addr| transport::bind_udp(addr).and_then(UdpSocket::from_std);
    let (socket, port) = bind_public(at, allowance, bind, UdpSocket::local_addr)?;
    let handle = PortHandle { stop: serving.runtime.listener_stop(), tasks: TaskTracker::new() };
    let span = info_span!("public", service = %upstream.served().service, udp_port = port);
    let (stats, timeout) = (serving.udp_stats.clone(), serving.open_timeout);
    // The flows are the port's: a withdrawal waits for them too, since each holds the socket.
    let (flows, stop) = (handle.tasks.clone(), handle.stop.clone());
    let serve = async move {
        wmproxy_tunnel::udp::listener::serve(
            Arc::new(socket),
            &upstream,
            Ask::Service,
            (stats, None),
            timeout,
            flows,
            stop,
        )
        .await;
    };
    serving.runtime.tracker.spawn(handle.tasks.track_future(serve.instrument(span)));
    Ok((handle, port))
}

/// Accepts users until the port is stopped; then the listener is dropped and the port refuses.
async fn accept_users(listener: TcpListener, upstream: ServiceUpstream, serving: Serving, stop: CancellationToken) {
    while let Some((tcp, peer, permit)) = wmproxy_tunnel::accept::next_user(&listener, &stop, &serving.users).await {
        let span = info_span!("stream", %peer);
        // The future is made inside the task (not moved into it), so it is stored once.
        let (upstream, carried, stop) = (upstream.clone(), serving.clone(), stop.clone());
        serving.runtime.tracker.spawn(
            async move {
                let _permit = permit;
                carry(tcp, peer, upstream, carried, stop).await;
            }
            .instrument(span),
        );
    }
    debug!("public port closed");
}

/// Carries one user connection to the client. Once the port is stopped, the connection gets
/// the drain grace period, then is closed.
async fn carry(tcp: TcpStream, peer: SocketAddr, upstream: ServiceUpstream, serving: Serving, stop: CancellationToken) {
    let served = upstream.served();
    let counted = serving.metrics.stream(&served.client, &served.service);
    tokio::select! {
        carried = upstream.carry(tcp, peer, &counted) => match carried {
            Ok(stats) => {
                debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished");
            }
            Err(OpenError::Failed(DataStreamError::Relay(e))) => debug!(error = %e, "relay ended"),
            Err(OpenError::Busy) => {
                // Counted, and logged at debug only: a flood past the limit must not flood the
                // log.
                serving.metrics.open_failed(Side::Internal);
                serving.metrics.refused(Refusal::StreamsPerClient);
                debug!("stream limit of this client reached; connection closed");
            }
            Err(e) => {
                serving.metrics.open_failed(e.side());
                debug!(error = %e, side = %e.side(), "stream ended without data or aborted");
            }
        },
        () = after_grace(&stop, serving.grace) => {
            debug!("service withdrawn and the grace period is over; connection closed");
        }
    }
}
