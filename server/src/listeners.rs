//! The server's own listeners, those its config declares (group ports and proxies): binding
//! them, starting them, and the table of their stop tokens by config key (`groups.NAME`,
//! `proxies.ADDR`), so that a reload can stop one and start another without touching the rest.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};
use wmproxy_config::{GroupFile, Proxy, ServiceType};

use wmproxy_proto::transport;

use crate::groups::{self, Group};
use crate::server::Shared;

/// A group's public socket.
#[derive(Debug)]
pub(crate) enum GroupSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds the public socket of the group `file` on `public_bind`; `None` for an HTTP group,
/// which is served on the vhost or HTTPS port (its routes go to the router instead).
pub(crate) fn bind_group(public_bind: IpAddr, file: &GroupFile) -> io::Result<Option<GroupSocket>> {
    let addr = SocketAddr::new(public_bind, file.remote_port);
    match file.kind {
        ServiceType::Tcp => bind_reusable(addr).map(|l| Some(GroupSocket::Tcp(l))),
        ServiceType::Udp => transport::bind_udp(addr).and_then(UdpSocket::from_std).map(|s| Some(GroupSocket::Udp(s))),
        ServiceType::Http | ServiceType::Https => Ok(None),
        // Refused by config validation; kept an error rather than a panic.
        ServiceType::Ws => Err(io::Error::other("a group cannot be of type ws")),
    }
}

/// Binds a TCP listener of the server's own (group port, proxy) with `SO_REUSEPORT` as well, so
/// that a reload can bind a changed entry's address while the old listener is still closing.
pub(crate) fn bind_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts serving a group's socket until its stop token (see [`Listeners`]).
pub(crate) fn spawn_group(shared: &Arc<Shared>, group: Arc<Group>, socket: GroupSocket) {
    let stop = shared.listeners.start(format!("groups.{}", group.name));
    let span = info_span!("group", name = %group.name, port = group.port());
    match socket {
        GroupSocket::Tcp(listener) => {
            let serve = groups::accept_users(group, listener, shared.clone(), stop);
            shared.tracker.spawn(serve.instrument(span));
        }
        GroupSocket::Udp(socket) => {
            let serve = wmproxy_proto::udp::listener::serve(
                Arc::new(socket),
                groups::GroupPort { group, shared: shared.clone() },
                shared.udp_stats.clone(),
                shared.config().limits.stream_open_timeout(),
                shared.tracker.clone(),
                stop,
            );
            shared.tracker.spawn(serve.instrument(span));
        }
    }
}

/// Starts serving a proxy's listener until its stop token. Its key is its configured address;
/// with port 0 (tests) it is the bound one, so several such proxies do not share a key.
pub(crate) fn spawn_proxy(shared: &Arc<Shared>, proxy: Proxy, listener: TcpListener) {
    let key = match listener.local_addr() {
        Ok(bound) if proxy.listen.port() == 0 => bound,
        _ => proxy.listen,
    };
    let stop = shared.listeners.start(format!("proxies.{key}"));
    let span = info_span!("proxy", listen = %proxy.listen, via = proxy.via.as_deref().unwrap_or_default());
    let serve = crate::proxy::serve(listener, proxy, shared.clone(), stop);
    shared.tracker.spawn(serve.instrument(span));
}

/// Stop tokens of the running config-declared listeners, children of the server's shutdown.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    root: Mutex<CancellationToken>,
    by_key: Mutex<HashMap<String, CancellationToken>>,
}

impl Listeners {
    /// Ties every listener to `shutdown` (called once, when the server starts running).
    pub fn set_root(&self, shutdown: CancellationToken) {
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = shutdown;
    }

    /// A new stop token for `key`; a listener already under that key is stopped.
    pub fn start(&self, key: String) -> CancellationToken {
        let stop = self.root.lock().unwrap_or_else(|p| p.into_inner()).child_token();
        if let Some(old) = self.lock().insert(key, stop.clone()) {
            old.cancel();
        }
        stop
    }

    /// Stops the listener under `key`, if any: it stops accepting at once; its connections get
    /// the drain grace period.
    pub fn stop(&self, key: &str) {
        if let Some(stop) = self.lock().remove(key) {
            stop.cancel();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }
}
