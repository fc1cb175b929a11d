//! The listeners the config declares: each group's port (or, for an HTTP group, its routes)
//! and each proxy. They are kept by config key (`groups.NAME`, `proxies.ADDR`) so that a reload
//! can stop one and start another without touching the rest; dropping an entry stops it (its
//! live connections get the drain grace period).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};
use wmproxy_config::{GroupEntry, GroupKind, ServerProxy};
use wmproxy_tunnel::listener::ListenerStats;

use crate::groups::{self, Group, GroupSocket, Groups};
use crate::proxy::{self, Via};
use crate::routes::{RouteHandle, RouteOwner, RouteTarget, Routes, Template};
use crate::runtime::Serving;
use crate::sessions::Sessions;
use crate::udp::UdpBudget;

/// One running listener of the config.
#[derive(Debug)]
struct Listener {
    stop: CancellationToken,
    /// An HTTP group's routes.
    routes: Option<RouteHandle>,
    /// Where it listens (proxies), and when it started (for config order).
    addr: Option<(u64, SocketAddr)>,
    /// What it carried (proxies).
    stats: Option<Arc<ListenerStats>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The config's listeners, and what starting one takes.
#[derive(Debug)]
pub(crate) struct Listeners {
    by_key: Mutex<HashMap<String, Listener>>,
    started: std::sync::atomic::AtomicU64,
    groups: Arc<Groups>,
    routes: Arc<Routes>,
    sessions: Arc<Sessions>,
    serving: Serving,
    udp: UdpBudget,
}

impl Listeners {
    pub fn new(
        groups: Arc<Groups>,
        routes: Arc<Routes>,
        sessions: Arc<Sessions>,
        serving: Serving,
        udp: UdpBudget,
    ) -> Self {
        Self { by_key: Mutex::default(), started: Default::default(), groups, routes, sessions, serving, udp }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Listener>> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `group` on `socket` (a TCP or UDP group), in place of whatever its key had.
    pub fn start_group_port(&self, group: Arc<Group>, socket: GroupSocket) {
        let stop = self.serving.runtime.listener_stop();
        let span = info_span!("group", name = %group.name, port = group.port());
        let (protocol, addr) = socket.describe();
        info!(listener = "group", group = %group.name, protocol, addr = ?addr, "listening");
        let serve = groups::serve_port(group.clone(), socket, self.serving.clone(), stop.clone());
        self.serving.runtime.tracker.spawn(serve.instrument(span));
        let listener = Listener { stop, routes: None, addr: None, stats: None };
        self.lock().insert(format!("groups.{}", group.name), listener);
    }

    /// Gives an HTTP group the routes of `entry`, in place of those it had, in one step.
    pub fn set_group_routes(&self, group: Arc<Group>, entry: &GroupEntry) {
        let (tls, hosts, locations) = match &entry.kind {
            GroupKind::Http { custom_domains, locations } => (false, custom_domains, locations.clone()),
            GroupKind::Https { custom_domains } => (true, custom_domains, Vec::new()),
            GroupKind::Tcp { .. } | GroupKind::Udp { .. } => return,
        };
        let locations = if locations.is_empty() { vec!["/".to_owned()] } else { locations };
        let key = format!("groups.{}", group.name);
        let owner = RouteOwner::Group(group.name.clone());
        let template =
            Template { tls, bridge: false, target: RouteTarget::Group(group), host_rewrite: None, authorization: None };
        let mut listeners = self.lock();
        let old = listeners.remove(&key);
        let mut entry =
            old.unwrap_or_else(|| Listener { stop: CancellationToken::new(), routes: None, addr: None, stats: None });
        entry.routes = Some(self.routes.replace(entry.routes.take(), owner, &template, hosts, &locations));
        listeners.insert(key, entry);
    }

    /// Serves `proxy` on `listener`. Its key is its configured address; with port 0 (tests) it
    /// is the bound one, so several such proxies do not share a key.
    pub fn start_proxy(&self, proxy: ServerProxy, listener: TcpListener) {
        let bound = listener.local_addr().ok();
        let key = match bound {
            Some(bound) if proxy.proxy.listen.port() == 0 => bound,
            _ => proxy.proxy.listen,
        };
        let stop = self.serving.runtime.listener_stop();
        let span = info_span!("proxy", listen = %proxy.proxy.listen, via = %proxy.via);
        let kind = proxy.proxy.kind.as_str();
        info!(listener = "proxy", kind, addr = ?bound, via = %proxy.via, "listening");
        let via = Via {
            name: proxy.via.clone(),
            sessions: self.sessions.clone(),
            groups: self.groups.clone(),
            open_timeout: self.serving.open_timeout,
            udp: self.udp.clone(),
        };
        let listen = bound.unwrap_or(proxy.proxy.listen);
        let stats = ListenerStats::new("proxy", proxy.proxy.kind.as_str(), listen, proxy.via.to_string());
        let serve = proxy::serve(listener, (proxy, stats.clone()), via, self.serving.clone(), stop.clone());
        self.serving.runtime.tracker.spawn(serve.instrument(span));
        let seq = self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = bound.map(|a| (seq, a));
        self.lock().insert(format!("proxies.{key}"), Listener { stop, routes: None, addr, stats: Some(stats) });
    }

    /// Stops the listener under `key`, if any.
    pub fn stop(&self, key: &str) {
        let stopped = self.lock().remove(key);
        drop(stopped);
    }

    /// The proxies' counters, in the order they started.
    pub fn proxy_stats(&self) -> Vec<Arc<ListenerStats>> {
        let mut all: Vec<(u64, Arc<ListenerStats>)> =
            self.lock().values().filter_map(|l| Some((l.addr?.0, l.stats.clone()?))).collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// Where the proxies listen now, in the order they started (the config's, at start).
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<(u64, SocketAddr)> = self.lock().values().filter_map(|l| l.addr).collect();
        addrs.sort();
        addrs.into_iter().map(|(_, a)| a).collect()
    }
}
