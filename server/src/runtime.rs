//! [`Runtime`]: the server's task tracker and root stop token, created by `Server::bind`, so
//! that nothing started before `run` (a reload, a listener) can outlive a shutdown.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the server's tasks run, and the token that stops them all.
#[derive(Debug, Clone, Default)]
pub(crate) struct Runtime {
    /// Every task of the server: tunnels, listeners, streams, flows.
    pub tracker: TaskTracker,
    /// Cancelled when the server stops; every listener's stop token is a child of it.
    pub shutdown: CancellationToken,
}

impl Runtime {
    /// A stop token for one listener: cancelled by its owner, or by the server's shutdown.
    pub fn listener_stop(&self) -> CancellationToken {
        self.shutdown.child_token()
    }
}

/// What every public listener (a service's port, a group's port, the vhost and HTTPS ports)
/// needs to serve its users.
#[derive(Debug, Clone)]
pub(crate) struct Serving {
    /// Where the users' tasks run.
    pub runtime: Runtime,
    /// How long a stopped listener's connections may finish.
    pub grace: std::time::Duration,
    /// How long opening a data stream (and the client's dial) may take.
    pub open_timeout: std::time::Duration,
    /// Per-service counters.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// UDP counters.
    pub udp_stats: std::sync::Arc<wmproxy_tunnel::udp::UdpStats>,
    /// Connections open per user, over every public TCP listener (`max_connections_per_user`).
    pub users: std::sync::Arc<wmproxy_tunnel::users::UserLimit>,
    /// Connections that have not sent their first bytes yet, on the listeners whose protocol
    /// starts with the user (vhost, HTTPS, proxies): `max_silent_connections`.
    pub silent: std::sync::Arc<wmproxy_tunnel::accept::Silent>,
}
