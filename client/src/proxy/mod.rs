//! Local proxies whose connections leave from the server: each accepted user runs its
//! handshake in its own task under the proxy's deadline (a silent user never blocks another),
//! then becomes a `Connect` stream through the current tunnel. The server dials the target
//! under its egress policy, and its answer becomes the proxy's reply.

mod http;
mod socks5;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};
use wmproxy_config::{Proxy, ProxyType};

use crate::forward::Tunnel;

/// Accepts proxy users on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tunnel: watch::Receiver<Option<Tunnel>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &shutdown).await {
        let span = info_span!("proxy_user", %peer, target = tracing::field::Empty);
        let conn = tunnel.borrow().as_ref().map(|t| t.conn.clone());
        match proxy.kind {
            ProxyType::Socks5 => tracker.spawn(socks5::serve(tcp, peer, proxy.clone(), conn).instrument(span)),
            ProxyType::Http => {
                tracker.spawn(http::serve(tcp, peer, proxy.clone(), conn, tracker.clone()).instrument(span))
            }
        };
    }
}
