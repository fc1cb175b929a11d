//! Load-balancing groups: a public port (bound at start) served by backends, each a service of
//! a connected client that joined with the group's key. Picking, health and membership live
//! here, in one place the status view reads.
//!
//! - [`health`]: a backend's active (rise/fall) and passive (max_fails/fail_timeout) state.
//! - [`policy`]: round robin, smooth weighted round robin, least connections, IP hash.
//! - `serve`: the public port's accept loop, with retry on the next backend.

pub mod health;
pub mod policy;
mod serve;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wmproxy_config::{GroupFile, Secret, ServiceType, VhostFile};
use wmproxy_proto::udp::FlowTable;
use wmproxy_proto::wire::{GroupMembership, RegisterOutcome, ServiceKind, ServiceSpec, auth};

use self::health::{Health, HealthView, Passive};
use self::policy::{Candidate, Selector};
pub(crate) use self::serve::{GroupPort, accept_users};
use crate::sessions::Session;

/// One backend: a service on a client, serving a group.
#[derive(Debug)]
pub struct Backend {
    id: u64,
    /// The client it lives on.
    pub client: String,
    /// Its service name on that client (what the `Expose` header names).
    pub service: String,
    /// Relative share of work.
    pub weight: u32,
    pub(crate) conn: quinn::Connection,
    /// The session's permits for public connections.
    pub(crate) streams: Arc<Semaphore>,
    /// The session's UDP flow table and flow permits.
    pub(crate) flows: Arc<FlowTable>,
    pub(crate) udp_permits: Arc<Semaphore>,
    /// Cancelled (and replaced) when the backend stops being healthy: its UDP flows end, and
    /// their users' next packets start flows on a healthy backend.
    flows_end: Mutex<CancellationToken>,
    drained: AtomicBool,
    active: AtomicUsize,
    hash_key: u64,
    health: Mutex<Health>,
}

/// A service's place in a group: removed from the group when the session ends.
pub(crate) type Membership = (Arc<Group>, Arc<Backend>);

/// Counts one connection as active on a backend until dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<Backend>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an active check result reported by the client.
    pub(crate) fn report(&self, ok: bool, latency: Duration) {
        let changed = self.health().report(ok, latency);
        if let Some(healthy) = changed {
            info!(client = %self.client, service = %self.service, healthy, "backend health changed");
            if !healthy {
                self.end_flows();
            }
        }
    }

    /// A dial failed before any byte was relayed (passive check).
    pub(crate) fn dial_failed(&self) {
        let ejected = self.health().dial_failed(Instant::now());
        if ejected {
            warn!(client = %self.client, service = %self.service, "backend ejected after failed dials");
            self.end_flows();
        }
    }

    /// The token a new UDP flow on this backend ends with.
    pub(crate) fn flows_token(&self) -> CancellationToken {
        self.flows_end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn end_flows(&self) {
        let old = std::mem::take(&mut *self.flows_end.lock().unwrap_or_else(|p| p.into_inner()));
        old.cancel();
    }

    /// A dial succeeded.
    pub(crate) fn dial_succeeded(&self) {
        self.health().dial_succeeded();
    }

    /// Counts a connection as active until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Drains (no new work, current connections stay) or restores the backend.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    fn eligible(&self, now: Instant) -> bool {
        !self.drained.load(Ordering::Relaxed) && self.health().eligible(now)
    }

    fn status(&self, now: Instant) -> BackendStatus {
        BackendStatus {
            client: self.client.clone(),
            service: self.service.clone(),
            weight: self.weight,
            drained: self.drained.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            health: self.health().view(now),
            traffic: Traffic::default(),
        }
    }
}

/// A backend's state, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendStatus {
    /// Client name.
    pub client: String,
    /// Service name on that client.
    pub service: String,
    /// Weight.
    pub weight: u32,
    /// Drained: gets no new work.
    pub drained: bool,
    /// Connections it serves now.
    pub active: usize,
    /// Health state and counters.
    pub health: HealthView,
    /// Connections and bytes of its service so far (filled in by the status view).
    pub traffic: Traffic,
}

/// What a published service (or backend) carried: connections, and bytes of finished ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Connections opened to it.
    pub connections: u64,
    /// Connections open now.
    pub active: i64,
    /// Bytes from users to the service (counted when a connection ends).
    pub bytes_in: u64,
    /// Bytes from the service to users (counted when a connection ends).
    pub bytes_out: u64,
}

/// A group's state, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// Its public port.
    pub port: u16,
    /// Its backends, in the order they joined.
    pub backends: Vec<BackendStatus>,
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
    pub name: String,
    /// Its public port (for HTTP groups, the vhost or HTTPS port); a reload may move it.
    port: std::sync::atomic::AtomicU16,
    /// TCP, UDP, HTTP or HTTPS.
    pub kind: ServiceType,
    settings: Mutex<Settings>,
    members: Mutex<Members>,
}

/// What a reload may change in a group without touching its port or its connections.
#[derive(Debug, Clone)]
struct Settings {
    key: Secret,
    passive: Passive,
    /// Further backends tried when a dial fails.
    retries: u32,
    policy: wmproxy_config::Policy,
}

impl Settings {
    fn of(file: &GroupFile) -> Self {
        Self {
            key: file.key.clone(),
            passive: Passive { max_fails: file.max_fails, fail_timeout: file.fail_timeout() },
            retries: file.retries,
            policy: file.policy,
        }
    }
}

impl Group {
    fn new(file: &GroupFile, vhost: &VhostFile) -> Self {
        let port = match file.kind {
            ServiceType::Http => vhost.http_routes_bind().map_or(0, |a| a.port()),
            ServiceType::Https => vhost.https_bind.map_or(0, |a| a.port()),
            ServiceType::Tcp | ServiceType::Udp | ServiceType::Ws => file.remote_port,
        };
        Self {
            name: file.name.get_ref().clone(),
            kind: file.kind,
            port: std::sync::atomic::AtomicU16::new(port),
            settings: Mutex::new(Settings::of(file)),
            members: Mutex::new(Members { backends: Vec::new(), selector: Selector::new(file.policy) }),
        }
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its public port (for HTTP groups, the vhost or HTTPS port).
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// Moves the group to `port` (a reload; the caller binds it). Backends stay.
    pub(crate) fn set_port(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    /// Takes every backend out (a reload removed the group): no work goes to them any more.
    pub(crate) fn clear(&self) -> usize {
        let mut members = self.members();
        let dropped = members.backends.len();
        members.backends.clear();
        dropped
    }

    fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Further backends tried when a dial fails.
    pub fn retries(&self) -> u32 {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).retries
    }

    /// Applies a reloaded entry of this group (same name, kind and port): key, passive checks,
    /// retries and policy. Backends and their connections stay; a new policy starts afresh.
    pub(crate) fn update(&self, file: &GroupFile) {
        let new = Settings::of(file);
        let old = std::mem::replace(&mut *self.settings.lock().unwrap_or_else(|p| p.into_inner()), new.clone());
        let mut members = self.members();
        if old.policy != new.policy {
            members.selector = Selector::new(new.policy);
        }
        for backend in &members.backends {
            backend.health().set_passive(new.passive);
        }
    }

    /// The backend for a new connection from `user`, among the eligible ones not in `tried`.
    pub(crate) fn pick(&self, user: IpAddr, tried: &[u64]) -> Option<Arc<Backend>> {
        let now = Instant::now();
        let mut guard = self.members();
        let members = &mut *guard;
        let eligible: Vec<&Arc<Backend>> =
            members.backends.iter().filter(|b| !tried.contains(&b.id) && b.eligible(now)).collect();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|b| Candidate {
                id: b.id,
                weight: b.weight,
                active: b.active.load(Ordering::Relaxed),
                hash_key: b.hash_key,
            })
            .collect();
        let index = members.selector.pick(&candidates, user)?;
        eligible.get(index).map(|b| Arc::clone(b))
    }

    fn remove(&self, id: u64) {
        let mut members = self.members();
        members.backends.retain(|b| b.id != id);
        members.selector.forget(id);
    }

    /// The group's state now.
    pub fn status(&self) -> GroupStatus {
        let now = Instant::now();
        let backends = self.members().backends.iter().map(|b| b.status(now)).collect();
        GroupStatus { name: self.name.clone(), port: self.port(), backends }
    }
}

/// Every group of the server, by name. Built from the config; a reload adds and removes
/// groups. The lock is held for single operations only.
#[derive(Debug, Default)]
pub struct Groups {
    by_name: std::sync::RwLock<HashMap<String, Arc<Group>>>,
    next_id: AtomicU64,
}

impl Groups {
    /// The groups of the config (ports are bound by the caller; `vhost` holds the ports bound
    /// for HTTP groups).
    pub fn new(files: &[GroupFile], vhost: &VhostFile) -> Self {
        let groups = Self::default();
        for file in files {
            groups.insert(file, vhost);
        }
        groups
    }

    /// Adds (or replaces) the group of `file`; returns it.
    pub(crate) fn insert(&self, file: &GroupFile, vhost: &VhostFile) -> Arc<Group> {
        let group = Arc::new(Group::new(file, vhost));
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).insert(group.name.clone(), group.clone());
        group
    }

    /// Takes the group `name` out (a reload removed it): no new members join it.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Group>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner()).remove(name)
    }

    /// All groups.
    pub fn all(&self) -> Vec<Arc<Group>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The group `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Group>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Adds the service `spec` of `client` to its group, if the name, type and key are right.
    /// Returns the outcome and, on success, the membership to remove when the session ends.
    pub(crate) fn join(
        &self,
        spec: &ServiceSpec,
        membership: &GroupMembership,
        session: &Session,
    ) -> (RegisterOutcome, Option<Membership>) {
        let kind = match spec.kind {
            ServiceKind::Tcp => ServiceType::Tcp,
            ServiceKind::Udp => ServiceType::Udp,
            ServiceKind::Http => ServiceType::Http,
            ServiceKind::Https => ServiceType::Https,
            ServiceKind::Ws => ServiceType::Ws,
            _ => return (RegisterOutcome::UnknownGroup, None),
        };
        let Some(group) = self.get(&membership.group).filter(|g| g.kind == kind) else {
            return (RegisterOutcome::UnknownGroup, None);
        };
        let settings = group.settings();
        if !auth::same_secret(settings.key.expose().as_bytes(), membership.key.0.as_bytes()) {
            return (RegisterOutcome::WrongGroupKey, None);
        }
        if kind == ServiceType::Udp && session.conn.max_datagram_size().is_none() {
            return (RegisterOutcome::DatagramsUnsupported, None);
        }
        if membership.weight == 0 {
            return (RegisterOutcome::Invalid("weight must be at least 1".into()), None);
        }
        let backend = Arc::new(Backend {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client: session.name.clone(),
            service: spec.name.clone(),
            weight: membership.weight,
            conn: session.conn.clone(),
            streams: session.streams.clone(),
            flows: session.flows.clone(),
            udp_permits: session.udp_permits.clone(),
            flows_end: Mutex::default(),
            drained: AtomicBool::new(membership.drain),
            active: AtomicUsize::new(0),
            hash_key: policy::identity_hash(&session.name, &spec.name),
            health: Mutex::new(Health::new(membership.health, settings.passive)),
        });
        group.members().backends.push(backend.clone());
        (RegisterOutcome::Joined { port: group.port() }, Some((group.clone(), backend)))
    }
}

/// Removes a session's backends from their groups (the client left).
pub(crate) fn leave(memberships: &[Membership]) {
    for (group, backend) in memberships {
        group.remove(backend.id);
    }
}
