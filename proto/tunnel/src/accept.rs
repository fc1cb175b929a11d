//! The accept step every TCP listener of both ends shares, and the grace a stopped listener's
//! connections get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::users::{UserLimit, UserPermit};

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

/// The next connection on `listener` whose user (see [`crate::users`]) is under its cap in
/// `users`, with the permit it holds while it lives; or `None` once `stop` is cancelled. A
/// connection over the cap is closed at once (an RST: nothing was carried) and not returned.
pub async fn next_user(
    listener: &TcpListener,
    stop: &CancellationToken,
    users: &Arc<UserLimit>,
) -> Option<(TcpStream, SocketAddr, UserPermit)> {
    loop {
        let (tcp, peer) = next(listener, stop).await?;
        match users.try_acquire(peer.ip()) {
            Some(permit) => return Some((tcp, peer, permit)),
            None => {
                debug!(%peer, "this user has too many connections open; refused");
                crate::relay::reset(tcp);
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
