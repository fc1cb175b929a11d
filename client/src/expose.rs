//! Streams the server opens: a user reached one of our published services. Dial the service's
//! local address, answer, relay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tracing::Span;
use wmproxy_proto::datastream;
use wmproxy_proto::wire::{OpenResult, OpenStream};

/// Time for the server's header, and for dialing a local service.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream opened by the server. `services` maps service names to local addresses.
pub async fn serve(send: SendStream, recv: RecvStream, services: Arc<HashMap<String, String>>) {
    datastream::accept(send, recv, STREAM_OPEN_TIMEOUT, async |header| match header {
        OpenStream::Expose { service, peer_addr } => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            match services.get(&service) {
                // Local services may be anywhere the client can reach, loopback included.
                Some(local) => wmproxy_proto::dial::dial(local, STREAM_OPEN_TIMEOUT, |_| true).await,
                None => Err(OpenResult::UnknownService),
            }
        }
        // The server may not ask a client to dial arbitrary targets.
        _ => Err(OpenResult::NotAllowed),
    })
    .await;
}
