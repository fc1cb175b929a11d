//! SOCKS5 and HTTP proxy front-ends both ends use: the client's local proxies (egress at the
//! server) and the server's proxies (egress at a client). Each accepted user runs its handshake
//! in its own task under the proxy's deadline, so a silent user never blocks another. The
//! target goes to the listener's [`Upstream`] as [`wmproxy_tunnel::Ask::Target`]; it opens a
//! stream to the far end and waits for its dial result, which becomes the proxy's answer (a
//! SOCKS5 reply code, an HTTP status). Every connection is counted in the listener's
//! [`ListenerStats`] (bytes as they pass, refusals by cause) and gets an access log line.

pub mod http;
pub mod socks5;
pub mod socks_udp;
mod udp_associate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span};
use wmproxy_tunnel::Upstream;
use wmproxy_tunnel::accept::Silent;
use wmproxy_tunnel::listener::{ListenerStats, Refusal};
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_tunnel::users::UserLimit;

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
    /// Where packets a SOCKS5 UDP association drops are counted (this end's UDP counters).
    pub udp_stats: Arc<UdpStats>,
    /// Connections per user (unlimited unless [`ProxySettings::with_limits`]).
    pub users: Arc<UserLimit>,
    /// Connections that have not sent their first bytes (uncapped unless
    /// [`ProxySettings::with_limits`]).
    pub silent: Arc<Silent>,
    /// What this listener carried and refused (counted nowhere unless
    /// [`ProxySettings::counted`]).
    pub stats: Arc<ListenerStats>,
}

impl ProxyKind {
    /// Its name in the config and the logs: `socks5` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Socks5 => "socks5",
            Self::Http => "http",
        }
    }
}

impl ProxySettings {
    /// Settings from a proxy's configured parts.
    pub fn new(
        kind: ProxyKind,
        credentials: Option<(&str, &str)>,
        handshake_timeout: Duration,
        udp_stats: Arc<UdpStats>,
    ) -> Self {
        let credentials = credentials.map(|(u, p)| Credentials { username: u.to_owned(), password: p.to_owned() });
        Self {
            kind,
            credentials,
            handshake_timeout,
            udp_stats,
            users: UserLimit::unlimited(),
            silent: Silent::unlimited(),
            stats: ListenerStats::new("proxy", kind.as_str(), ([0, 0, 0, 0], 0).into(), String::new()),
        }
    }

    /// Counts this listener's connections, bytes and refusals in `stats` (which its end
    /// reports in `/metrics` and `/status`).
    #[must_use]
    pub fn counted(mut self, stats: Arc<ListenerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Caps each user's connections with `users`, and the connections that have not sent
    /// anything yet with `silent` (both shared with the other public listeners).
    #[must_use]
    pub fn with_limits(mut self, users: Arc<UserLimit>, silent: Arc<Silent>) -> Self {
        self.users = users;
        self.silent = silent;
        self
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
    (stop, grace): (CancellationToken, Duration),
) {
    while let Some((tcp, peer, permit)) = wmproxy_tunnel::accept::next_user(&listener, &stop, &settings.users).await {
        let span = info_span!("proxy_user", %peer, target = tracing::field::Empty);
        let (settings, upstream, stop) = (settings.clone(), upstream.clone(), stop.clone());
        let tasks = tracker.clone();
        let user = async move {
            let _permit = permit;
            let _open = settings.stats.open();
            if !settings.silent.first_bytes(&tcp, settings.handshake_timeout).await {
                settings.stats.refused(Refusal::Request);
                return tracing::debug!("no first bytes; closing");
            }
            let served = async {
                match settings.kind {
                    ProxyKind::Socks5 => socks5::serve(tcp, peer, settings, upstream, tasks).await,
                    ProxyKind::Http => http::serve(tcp, peer, settings, upstream, tasks).await,
                }
            };
            tokio::select! {
                () = served => {}
                () = wmproxy_tunnel::accept::after_grace(&stop, grace) => {
                    tracing::debug!("the proxy stopped and the grace period is over; connection closed");
                }
            }
        };
        tracker.spawn(user.instrument(span));
    }
}
