//! The accept step every TCP listener of both ends shares, and the grace a stopped listener's
//! connections get.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Pause after a failed `accept` (EMFILE and the like) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`, or `None` once `stop` is cancelled. Accept errors are
/// logged and retried after [`ACCEPT_ERROR_BACKOFF`]. `TCP_NODELAY` is set on the connection.
pub async fn next(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return Some((tcp, peer));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// Completes `grace` after `stop` is cancelled: what a live connection of a stopped listener
/// (a withdrawn service, a removed group or proxy, shutdown) waits on before it is closed.
/// Pending for ever while `stop` is not cancelled.
pub async fn after_grace(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}
