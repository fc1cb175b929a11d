//! SOCKS5 and HTTP proxy front-ends both ends use: the client's local proxies (egress at the
//! server) and the server's proxies (egress at a client). Each accepted user runs its handshake
//! in its own task under the proxy's deadline, so a silent user never blocks another. The
//! target goes to an [`Upstream`], which opens a stream to the far end and waits for its dial
//! result; that result becomes the proxy's answer (a SOCKS5 reply code, an HTTP status).

pub mod http;
pub mod socks5;
pub mod socks_udp;
mod udp_associate;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};

use crate::datastream::DataStreamError;

/// Where a proxy's connections go: opens a stream to `target` through a tunnel, for `peer`,
/// and returns it once the far end has dialed (or why it did not).
pub trait Upstream: Send + Sync + 'static {
    /// Opens the stream and waits for the far end's answer.
    fn open(
        &self,
        target: String,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<(SendStream, RecvStream), DataStreamError>> + Send;

    /// Where the UDP flows of a SOCKS5 UDP ASSOCIATE from `peer` go (the far end sends each
    /// destination's packets under its egress policy); `None` when there is no tunnel or this
    /// upstream carries no UDP, and the command is refused.
    fn udp(&self, peer: SocketAddr) -> Option<UdpRoute> {
        let _ = peer;
        None
    }
}

/// The tunnel, flow table and flow header of SOCKS5 UDP ASSOCIATE flows.
#[derive(Debug, Clone)]
pub struct UdpRoute {
    /// The tunnel.
    pub conn: quinn::Connection,
    /// Its flow table.
    pub table: Arc<crate::udp::FlowTable>,
    /// The header that opens a flow to `target` for the user at the address.
    pub header: fn(String, SocketAddr) -> crate::wire::OpenStream,
}

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS5, CONNECT.
    Socks5,
    /// HTTP: CONNECT and absolute-form requests.
    Http,
}

/// A user name and password a proxy requires. `Debug` masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"MASKED").finish()
    }
}

/// How one proxy listener behaves.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The protocol.
    pub kind: ProxyKind,
    /// Required credentials, if any.
    pub credentials: Option<Credentials>,
    /// Time a user has for its greeting and request (SOCKS5) or request head (HTTP).
    pub handshake_timeout: Duration,
}

impl ProxySettings {
    /// Settings from a proxy's configured parts.
    pub fn new(kind: ProxyKind, credentials: Option<(&str, &str)>, handshake_timeout: Duration) -> Self {
        let credentials = credentials.map(|(u, p)| Credentials { username: u.to_owned(), password: p.to_owned() });
        Self { kind, credentials, handshake_timeout }
    }
}

/// Accepts proxy users on `listener` until `stop`; each runs in its own task on `tracker`,
/// under the span `proxy_user{peer, target}`. Once `stop` is cancelled, connections in flight
/// get `grace`, then are closed.
pub async fn serve<U: Upstream>(
    listener: TcpListener,
    settings: ProxySettings,
    upstream: Arc<U>,
    tracker: TaskTracker,
    (stop, grace): (CancellationToken, std::time::Duration),
) {
    while let Some((tcp, peer)) = crate::accept::next(&listener, &stop).await {
        let span = info_span!("proxy_user", %peer, target = tracing::field::Empty);
        let (settings, upstream, stop) = (settings.clone(), upstream.clone(), stop.clone());
        let tasks = tracker.clone();
        let user = async move {
            let served = async {
                match settings.kind {
                    ProxyKind::Socks5 => socks5::serve(tcp, peer, settings, upstream, tasks).await,
                    ProxyKind::Http => http::serve(tcp, peer, settings, upstream, tasks).await,
                }
            };
            tokio::select! {
                () = served => {}
                () = crate::shutdown::after_grace(&stop, grace) => {
                    tracing::debug!("the proxy stopped and the grace period is over; connection closed");
                }
            }
        };
        tracker.spawn(user.instrument(span));
    }
}
