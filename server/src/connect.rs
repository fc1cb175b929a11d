//! The server's side of a client's local forward: the `Connect` target is dialed if the egress
//! policy allows it.

use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tracing::{Span, debug};
use wmproxy_proto::datastream;
use wmproxy_proto::wire::{OpenResult, OpenStream};

use crate::server::Shared;

/// Serves one data stream opened by a client.
pub(crate) async fn serve(send: SendStream, recv: RecvStream, shared: Arc<Shared>) {
    let timeout = shared.config.limits.stream_open_timeout();
    datastream::accept(send, recv, timeout, async |header| match header {
        OpenStream::Connect { target, peer_addr } => {
            Span::current().record("target", target.as_str());
            debug!(%peer_addr, "forward requested");
            let egress = &shared.config.egress;
            wmproxy_proto::dial::dial(&target, timeout, |ip| egress.permits(ip)).await
        }
        // A client may not ask the server to expose anything.
        _ => Err(OpenResult::NotAllowed),
    })
    .await;
}
