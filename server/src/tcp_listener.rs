//! The TCP transport's port: TLS on TCP for clients whose network blocks UDP. Each connection
//! takes a place in the same pre-auth budget as a QUIC one (TCP's own handshake has proven its
//! address, so none is asked to retry), and goes at once to its own task, where
//! `Tunnels::handshake` runs TLS, HTTP/2 and the Hello under the auth timeout.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_tunnel::accept;
use wmproxy_wire::ALPN_TCP;

use crate::handshake::Arrival;
use crate::identity::Identity;
use crate::metrics::Refusal;
use crate::preauth::Admission;
use crate::server::ServerError;
use crate::tunnel::Tunnels;

/// The TCP transport's TLS setup: TLS 1.3 only, the server's identity, ALPN [`ALPN_TCP`].
pub(crate) fn tls_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(wmproxy_tunnel::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(ServerError::Tls)?;
    tls.alpn_protocols = vec![ALPN_TCP.to_vec()];
    Ok(Arc::new(tls))
}

/// Accepts TCP-transport connections on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, tunnels: Arc<Tunnels>, stop: CancellationToken) {
    while let Some((tcp, peer)) = accept::next(&listener, &stop).await {
        // Per connection, and cheap: nothing here waits or logs above debug.
        match tunnels.preauth.admit(peer.ip(), true) {
            Admission::Admitted { slot, evicted_oldest } => {
                if evicted_oldest {
                    debug!(%peer, "too many connections waiting to authenticate; the oldest makes room");
                }
                let span = info_span!("tunnel", %peer, transport = "tcp", client = tracing::field::Empty);
                tunnels.runtime.tracker.spawn(tunnels.clone().serve(Arrival::Tcp(tcp, peer), slot).instrument(span));
            }
            Admission::AddressFull | Admission::Retry => {
                debug!(%peer, "too many connections from this address waiting to authenticate; refusing");
                tunnels.metrics.refused(Refusal::UnauthenticatedPerAddress);
            }
        }
    }
}
