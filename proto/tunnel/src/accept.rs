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

/// TCP keepalive on every connection a relay carries (users' and backends'): a peer that
/// vanished without a FIN or RST (a NAT that forgot the flow, a machine powered off) is
/// noticed after about [`KEEPALIVE_IDLE`] plus six unanswered probes [`KEEPALIVE_INTERVAL`]
/// apart, and its relay ends.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns TCP keepalive on for `tcp` ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`], six probes).
pub fn keepalive(tcp: &TcpStream) {
    let probes =
        socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(6);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes);
}

/// The next connection on `listener`, or `None` once `stop` is cancelled. Accept errors are
/// logged and retried after [`ACCEPT_ERROR_BACKOFF`]. `TCP_NODELAY` and [`keepalive`] are set
/// on the connection; the peer's address is [`crate::users::canonical`].
pub async fn next(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                keepalive(&tcp);
                return Some((tcp, crate::users::canonical(peer)));
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

/// The connections that have not sent their first bytes yet, on the listeners whose protocol
/// starts with the user (HTTP, TLS, SOCKS5), capped.
pub struct Silent {
    places: tokio::sync::Semaphore,
    /// Called for each connection closed because every place was taken (a metrics counter).
    on_full: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Silent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Silent").field("free", &self.places.available_permits()).finish_non_exhaustive()
    }
}

impl Silent {
    /// At most `max` silent connections at once; `on_full` counts those closed over it.
    pub fn new(max: usize, on_full: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { places: tokio::sync::Semaphore::new(max), on_full: Box::new(on_full) })
    }

    /// No cap.
    pub fn unlimited() -> Arc<Self> {
        Self::new(tokio::sync::Semaphore::MAX_PERMITS, || {})
    }

    /// Waits, within `timeout`, until the user on `tcp` has sent its first bytes, holding a
    /// place meanwhile. `false`: every place was taken, or nothing came in time; close it.
    pub async fn first_bytes(&self, tcp: &TcpStream, timeout: Duration) -> bool {
        let Ok(_place) = self.places.try_acquire() else {
            debug!("too many connections that have not sent anything; closing a new one");
            (self.on_full)();
            return false;
        };
        // `peek` waits for a byte without taking it (`readable` may wake with nothing to read).
        matches!(tokio::time::timeout(timeout, tcp.peek(&mut [0u8; 1])).await, Ok(Ok(_)))
    }
}

/// Completes `grace` after `stop` is cancelled: what a live connection of a stopped listener
/// (a withdrawn service, a removed group or proxy, shutdown) waits on before it is closed.
/// Pending for ever while `stop` is not cancelled.
pub async fn after_grace(stop: &CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}
