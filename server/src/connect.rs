//! The server's side of a client's local forward: read the `Connect` header, apply the egress
//! policy, dial, answer, relay.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tracing::{Span, debug};
use wmproxy_proto::datastream::{self, DataStreamError};
use wmproxy_proto::wire::{OpenResult, OpenStream};

use crate::server::Shared;

/// Serves one data stream opened by a client.
pub(crate) async fn serve(send: SendStream, mut recv: RecvStream, shared: Arc<Shared>) {
    let timeout = shared.config.limits.stream_open_timeout();
    let dialed = match datastream::read_open(&mut recv, timeout).await {
        Ok(OpenStream::Connect { target, peer_addr }) => {
            Span::current().record("target", target.as_str());
            debug!(%peer_addr, "forward requested");
            let egress = &shared.config.egress;
            wmproxy_proto::dial::dial(&target, timeout, |ip| egress.permits(ip)).await
        }
        // A client may not ask the server to expose anything.
        Ok(_) => Err(OpenResult::NotAllowed),
        Err(e) => {
            debug!(error = %e, "bad data stream; resetting it");
            return datastream::abort(send, recv);
        }
    };
    match datastream::complete(send, recv, dialed).await {
        Ok(stats) => debug!(up = stats.quic_to_tcp, down = stats.tcp_to_quic, "forward finished"),
        Err(DataStreamError::Refused(result)) => debug!(%result, "forward refused"),
        Err(e) => debug!(error = %e, "forward aborted"),
    }
}
