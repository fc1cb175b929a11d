//! Load-balancing groups: a public port or host names (from the config) served by backends,
//! each a service of a connected client that joined with the group's key. Picking, health and
//! membership live here, in one place the status view and the metrics read.
//!
//! - `group`: [`Group`], its settings, backends and selector; an [`wmproxy_tunnel::Upstream`]
//!   that tries the next backend when a dial fails.
//! - `backend`: [`Backend`], one member, with its weight, drain flag and health.
//! - [`health`]: a backend's active (rise/fall) and passive (max_fails/fail_timeout) state.
//! - [`policy`]: round robin, smooth weighted round robin, least connections, IP hash.
//! - `port`: a TCP or UDP group's public port.
//!
//! A client's service joins through `Groups::join`, which returns a `Membership`: the
//! backend stays in its group exactly as long as that handle lives.

mod backend;
mod group;
pub mod health;
pub mod policy;
mod port;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use wmproxy_config::GroupEntry;
use wmproxy_tunnel::Tunnel;
use wmproxy_wire::{GroupMembership, Name, RegisterOutcome, ServiceKind, auth};

pub use self::backend::{Backend, BackendStatus, GroupStatus};
pub use self::group::Group;
use self::health::Health;
pub(crate) use self::port::{GroupSocket, bind as bind_port, serve as serve_port};
use crate::dashboard::events::Events;
use crate::udp::UdpBudget;
use crate::upstream::Served;

/// A service's place in a group: it leaves the group when this is dropped.
#[derive(Debug)]
pub(crate) struct Membership {
    group: Arc<Group>,
    backend: Arc<Backend>,
}

impl Membership {
    /// The backend, for health reports and draining.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The group's public port.
    pub fn port(&self) -> u16 {
        self.group.port()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.remove(self.backend.id);
    }
}

/// Every group of the server, by name. Built from the config; a reload adds, changes and
/// removes groups. Locks are held for single operations only.
#[derive(Debug)]
pub struct Groups {
    by_name: RwLock<HashMap<Name, Arc<Group>>>,
    next_id: AtomicU64,
    open_timeout: Duration,
    udp: UdpBudget,
    /// Where a backend's ejection is told (the dashboard's events).
    events: Arc<Events>,
}

impl Groups {
    pub(crate) fn new(open_timeout: Duration, udp: UdpBudget, events: Arc<Events>) -> Self {
        Self { by_name: RwLock::default(), next_id: AtomicU64::new(0), open_timeout, udp, events }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Name, Arc<Group>>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Name, Arc<Group>>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds (or replaces) the group of `entry`, served on `port`; returns it.
    pub(crate) fn insert(&self, entry: &GroupEntry, port: u16) -> Arc<Group> {
        let group = Arc::new(Group::new(entry, port, self.open_timeout, self.udp.clone(), self.events.clone()));
        self.write().insert(group.name.clone(), group.clone());
        group
    }

    /// Takes the group `name` out (a reload removed it): no new members join it.
    pub(crate) fn remove(&self, name: &str) -> Option<Arc<Group>> {
        self.write().remove(name)
    }

    /// The group `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Group>> {
        self.read().get(name).cloned()
    }

    /// The backend `service` of `client`, in whichever group it serves.
    pub fn backend(&self, client: &str, service: &str) -> Option<Arc<Backend>> {
        self.read().values().find_map(|g| g.backend(client, service))
    }

    /// Every group's state, sorted by name.
    pub fn statuses(&self) -> Vec<GroupStatus> {
        let mut all: Vec<_> = self.read().values().map(|g| g.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Adds `service` of `client`, reached through `tunnel`, to the group `membership` names,
    /// if the name, kind and key are right. The backend leaves when the membership is dropped.
    pub(crate) fn join(
        &self,
        served: Served,
        kind: ServiceKind,
        membership: &GroupMembership,
        tunnel: &Arc<Tunnel>,
    ) -> Result<Membership, RegisterOutcome> {
        let group = self.get(&membership.group).filter(|g| g.kind == kind).ok_or(RegisterOutcome::UnknownGroup)?;
        let settings = group.settings();
        if !auth::same_secret(settings.key.expose().as_bytes(), membership.key.0.as_bytes()) {
            return Err(RegisterOutcome::WrongGroupKey);
        }
        if kind == ServiceKind::Udp && !tunnel.carries_datagrams() {
            return Err(RegisterOutcome::DatagramsUnsupported);
        }
        if membership.weight == 0 {
            return Err(RegisterOutcome::Invalid("weight must be at least 1".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let health = Health::new(membership.health, settings.passive);
        let backend = Arc::new(Backend::new(id, served, tunnel.clone(), membership.weight, membership.drain, health));
        group.add(backend.clone());
        Ok(Membership { group, backend })
    }
}
