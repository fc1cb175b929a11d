//! Public UDP ports: binding one for a client's UDP service, and the flow source that opens a
//! flow to the client for each new user address.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::{Instrument, info_span};
use wmproxy_config::PortAllowance;
use wmproxy_proto::transport;
use wmproxy_proto::udp::listener::{self, FlowSource, NoRoute, Route};
use wmproxy_proto::wire::{OpenStream, RegisterOutcome, ServiceSpec};

use crate::publish;
use crate::server::Shared;
use crate::sessions::Session;

/// Binds the public UDP port of `spec` and starts serving it until `stop` (the service is
/// withdrawn or the session ends).
pub(crate) fn bind(
    spec: &ServiceSpec,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
    stop: publish::ServiceStop,
) -> RegisterOutcome {
    if session.conn.max_datagram_size().is_none() {
        return RegisterOutcome::DatagramsUnsupported;
    }
    let bind = |addr| transport::bind_udp(addr).and_then(UdpSocket::from_std);
    let (socket, bound) = match publish::bind_public(spec.remote_port, allowance, shared, bind, UdpSocket::local_addr) {
        Ok(pair) => pair,
        Err(refused) => return refused,
    };
    let source = PublicPort { service: spec.name.clone(), session: session.clone(), shared: shared.clone() };
    let serve = listener::serve(
        Arc::new(socket),
        source,
        shared.udp_stats.clone(),
        shared.config().limits.stream_open_timeout(),
        // The flows are the service's: a withdrawal waits for them too, since each holds the
        // socket, before the port may be bound again.
        stop.listener.clone(),
        stop.token,
    );
    let span = info_span!("public", service = %spec.name, udp_port = bound);
    session.listeners.spawn(stop.listener.track_future(serve.instrument(span)));
    RegisterOutcome::Ok { port: bound }
}

/// Flows of one public UDP port: they ride the session's tunnel, within the client's and the
/// server's flow limits.
struct PublicPort {
    service: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
}

impl FlowSource for PublicPort {
    fn route(&self, peer: SocketAddr) -> Result<Route, NoRoute> {
        let guards =
            listener::permits(&[&self.session.udp_permits, &self.shared.udp_flows]).ok_or(NoRoute::FlowLimit)?;
        Ok(Route {
            conn: self.session.conn.clone(),
            table: self.session.flows.clone(),
            header: OpenStream::UdpExpose { service: self.service.clone(), peer_addr: peer },
            ends_with: None,
            guards,
        })
    }
}
