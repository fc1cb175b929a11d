//! Streams the server opens: a user reached one of our published services. Dial the service's
//! local address, answer, relay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tracing::{Span, debug};
use wmproxy_proto::datastream::{self, DataStreamError};
use wmproxy_proto::wire::{OpenResult, OpenStream};

/// Time for the server's header, and for dialing a local service.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream opened by the server. `services` maps service names to local addresses.
pub async fn serve(send: SendStream, mut recv: RecvStream, services: Arc<HashMap<String, String>>) {
    let dialed = match datastream::read_open(&mut recv, STREAM_OPEN_TIMEOUT).await {
        Ok(OpenStream::Expose { service, peer_addr }) => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            match services.get(&service) {
                // Local services may be anywhere the client can reach, loopback included.
                Some(local) => wmproxy_proto::dial::dial(local, STREAM_OPEN_TIMEOUT, |_| true).await,
                None => Err(OpenResult::UnknownService),
            }
        }
        // The server may not ask a client to dial arbitrary targets.
        Ok(_) => Err(OpenResult::NotAllowed),
        Err(e) => {
            debug!(error = %e, "bad data stream; resetting it");
            return datastream::abort(send, recv);
        }
    };
    match datastream::complete(send, recv, dialed).await {
        Ok(stats) => debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished"),
        Err(DataStreamError::Refused(result)) => {
            debug!(%result, "could not reach the local service")
        }
        Err(e) => debug!(error = %e, "stream aborted"),
    }
}
