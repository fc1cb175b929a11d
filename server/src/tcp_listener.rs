//! The TCP transport's port: TLS on TCP for clients whose network blocks UDP. Each connection
//! takes a place in the same pre-auth budget as a QUIC one (TCP's own handshake has proven its
//! address, so none is asked to retry), and goes at once to its own task, where
//! `Tunnels::handshake` runs TLS (the `server::tunnel_tls` setup, ALPN `wmproxy-tcp/1`), HTTP/2 and
//! the Hello under the auth timeout.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_tunnel::accept;

use crate::handshake::Arrival;
use crate::metrics::Refusal;
use crate::preauth::Admission;
use crate::tunnel::Tunnels;

/// Accepts TCP-transport connections on `listener` until `stop`; each runs TLS with `tls`.
pub(crate) async fn serve(
    (listener, tls): (TcpListener, Arc<rustls::ServerConfig>),
    tunnels: Arc<Tunnels>,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = accept::next(&listener, &stop).await {
        // Per connection, and cheap: nothing here waits or logs above debug.
        match tunnels.preauth.admit(peer.ip(), true) {
            Admission::Admitted { slot, evicted_oldest } => {
                if evicted_oldest {
                    debug!(%peer, "too many connections waiting to authenticate; the oldest makes room");
                }
                let span = info_span!("tunnel", %peer, transport = "tcp", client = tracing::field::Empty);
                tunnels
                    .runtime
                    .tracker
                    .spawn(tunnels.clone().serve(Arrival::Tcp(tcp, peer, tls.clone()), slot).instrument(span));
            }
            Admission::AddressFull | Admission::Retry => {
                debug!(%peer, "too many connections from this address waiting to authenticate; refusing");
                tunnels.metrics.refused(Refusal::UnauthenticatedPerAddress);
            }
        }
    }
}
