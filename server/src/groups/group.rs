//! One group: its settings (which a reload may change in place), its backends and its
//! selector. As an [`Upstream`] it picks a backend for each connection or flow, tries the next
//! one when a dial fails, and tells passive health what happened.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;
use wmproxy_config::{GroupEntry, Policy, Secret};
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Side, Upstream};
use wmproxy_wire::{Name, ServiceKind};

use super::backend::{Backend, GroupStatus};
use super::health::Passive;
use super::policy::Selector;
use crate::dashboard::events::{EventKind, Events};
use crate::udp::UdpBudget;
use crate::upstream::{Served, flow_header, flow_on, stream_header};

/// What a reload may change in a group without touching its port or its connections.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub key: Secret,
    pub passive: Passive,
    /// Further backends tried when a dial fails.
    pub retries: u32,
    pub policy: Policy,
}

impl Settings {
    pub fn of(entry: &GroupEntry) -> Self {
        Self {
            key: entry.key.clone(),
            passive: Passive { max_fails: entry.max_fails, fail_timeout: entry.fail_timeout() },
            retries: entry.retries,
            policy: entry.policy,
        }
    }
}

#[derive(Debug)]
struct Members {
    backends: Vec<Arc<Backend>>,
    selector: Selector,
}

/// A load-balancing group.
#[derive(Debug)]
pub struct Group {
    /// Its name.
    pub name: Name,
    /// The kind of service that may join.
    pub kind: ServiceKind,
    /// Its public port (for HTTP groups, the vhost or HTTPS port); a reload may move it.
    port: AtomicU16,
    settings: Mutex<Settings>,
    members: Mutex<Members>,
    /// Time for a backend's answer.
    open_timeout: Duration,
    udp: UdpBudget,
    events: Arc<Events>,
}

impl Group {
    pub(super) fn new(
        entry: &GroupEntry,
        port: u16,
        open_timeout: Duration,
        udp: UdpBudget,
        events: Arc<Events>,
    ) -> Self {
        let settings = Settings::of(entry);
        Self {
            name: entry.name.clone(),
            kind: entry.kind.service_kind(),
            port: AtomicU16::new(port),
            members: Mutex::new(Members { backends: Vec::new(), selector: Selector::new(settings.policy) }),
            settings: Mutex::new(settings),
            open_timeout,
            udp,
            events,
        }
    }

    /// An empty TCP group named `name`, for unit tests (and fuzz targets) of what holds groups.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn for_tests(name: &str) -> Self {
        let entry = GroupEntry {
            name: Name::new(name).unwrap_or_else(|e| panic!("{e}")),
            key: Secret::new("group-key"),
            policy: Policy::RoundRobin,
            max_fails: 1,
            fail_timeout_secs: 10,
            retries: 2,
            kind: wmproxy_config::GroupKind::Tcp { remote_port: 1 },
        };
        Self::new(&entry, 1, Duration::from_secs(1), UdpBudget::new(1), Arc::default())
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its public port (for HTTP groups, the vhost or HTTPS port).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// Moves the group to `port` (a reload; the caller binds it). Backends stay.
    pub(crate) fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// Applies a reloaded entry of this group (same name and kind): key, passive checks,
    /// retries and policy. Backends and their connections stay; a new policy starts afresh.
    pub(crate) fn update(&self, entry: &GroupEntry) {
        let new = Settings::of(entry);
        let old = std::mem::replace(&mut *self.settings.lock().unwrap_or_else(|p| p.into_inner()), new.clone());
        let mut members = self.members();
        if old.policy != new.policy {
            members.selector = Selector::new(new.policy);
        }
        for backend in &members.backends {
            backend.health().set_passive(new.passive);
        }
    }

    /// Takes every backend out (a reload removed the group): no work goes to them any more.
    pub(crate) fn clear(&self) -> usize {
        let mut members = self.members();
        let dropped = members.backends.len();
        members.backends.clear();
        dropped
    }

    pub(super) fn add(&self, backend: Arc<Backend>) {
        self.members().backends.push(backend);
    }

    pub(super) fn remove(&self, id: u64) {
        let mut members = self.members();
        members.backends.retain(|b| b.id != id);
        members.selector.forget(id);
    }

    /// The backend for a new connection from `user`, among the eligible ones not in `tried`.
    fn pick(&self, user: IpAddr, tried: &[u64]) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let mut guard = self.members();
        let members = &mut *guard;
        let eligible: Vec<&Arc<Backend>> =
            members.backends.iter().filter(|b| !tried.contains(&b.id) && b.eligible(now)).collect();
        let candidates: Vec<_> = eligible.iter().map(|b| b.candidate()).collect();
        let index = members.selector.pick(&candidates, user)?;
        eligible.get(index).map(|b| Arc::clone(b))
    }

    /// The backend `service` of `client`, if it serves this group.
    pub(crate) fn backend(&self, client: &str, service: &str) -> Option<Arc<Backend>> {
        let members = self.members();
        members.backends.iter().find(|b| b.served.client == client && b.served.service == service).cloned()
    }

    /// The group's state now.
    pub fn status(&self) -> GroupStatus {
        let now = Instant::now();
        let backends = self.members().backends.iter().map(|b| b.status(now)).collect();
        GroupStatus { name: self.name.to_string(), port: self.port(), http: None, backends }
    }
}

impl Upstream for Group {
    type By = Served;

    /// Tries up to `1 + retries` eligible backends. Each failure the backend's (or its tunnel's)
    /// side is answerable for counts against its passive health; a limit (ours or the client's)
    /// only moves on. Records the backend on the current span.
    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<Served>, OpenError> {
        let mut tried = Vec::new();
        let mut last = None;
        for _ in 0..=self.settings().retries {
            let Some(backend) = self.pick(peer.ip(), &tried) else { break };
            tried.push(backend.id);
            let header = stream_header(ask.clone(), &backend.served.service, peer);
            let active = backend.begin();
            match backend.tunnel.open_held(&header, self.open_timeout, backend.served.clone()).await {
                Ok(mut opened) => {
                    backend.dial_succeeded();
                    let name = format_args!("{}/{}", backend.served.client, backend.served.service);
                    tracing::Span::current().record("backend", tracing::field::display(name));
                    opened.hold.push(Box::new(active));
                    return Ok(opened);
                }
                Err(e) => {
                    if matches!(e.side(), Side::Backend | Side::Tunnel) && backend.dial_failed() {
                        let (client, service) = (&backend.served.client, &backend.served.service);
                        self.events.record(EventKind::Health, format!("{client}:{service} is ejected (failed dials)"));
                    }
                    debug!(client = %backend.served.client, service = %backend.served.service, error = %e, side = %e.side(), "backend failed; trying another");
                    last = Some(e);
                }
            }
        }
        match last {
            None => Err(OpenError::NoneEligible),
            Some(OpenError::Failed(last)) => Err(OpenError::AllFailed { tried: tried.len(), last }),
            Some(OpenError::Refused(result)) => {
                let last = wmproxy_tunnel::datastream::DataStreamError::Refused(result);
                Err(OpenError::AllFailed { tried: tried.len(), last })
            }
            Some(other) => Err(other),
        }
    }

    /// A flow rides the tunnel of the backend the policy picks, within that client's and the
    /// server's flow limits, and ends if the backend stops being healthy.
    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        let backend = self.pick(peer.ip(), &[]).ok_or(OpenError::NoneEligible)?;
        let header = flow_header(ask, &backend.served.service, peer);
        let mut route = flow_on(&backend.tunnel, &self.udp, header, Some(backend.flows_token()))?;
        route.hold.push(Box::new(backend.begin()));
        Ok(route)
    }
}
