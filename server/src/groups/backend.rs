//! One backend of a group: a service of a connected client that joined with the group's key,
//! with its weight, drain flag, active connections and health.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wmproxy_tunnel::Tunnel;

use super::health::{Health, HealthView};
use super::policy::Candidate;
use crate::upstream::Served;

/// One backend: a service on a client, serving a group.
#[derive(Debug)]
pub struct Backend {
    pub(super) id: u64,
    /// The client and its service (what the `Expose` header names).
    pub(crate) served: Served,
    /// Relative share of work.
    pub weight: u32,
    /// The client's tunnel.
    pub(crate) tunnel: Arc<Tunnel>,
    /// Cancelled (and replaced) when the backend stops being healthy: its UDP flows end, and
    /// their users' next packets start flows on a healthy backend.
    flows_end: Mutex<CancellationToken>,
    drained: AtomicBool,
    active: AtomicUsize,
    hash_key: u64,
    health: Mutex<Health>,
}

/// Counts one connection as active on a backend until dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<Backend>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
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
    pub traffic: crate::metrics::Traffic,
}

/// A group's state, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStatus {
    /// The group's name.
    pub name: String,
    /// Its public port.
    pub port: u16,
    /// For an HTTP or HTTPS group, the names and paths it is reached by.
    #[serde(flatten)]
    pub http: Option<wmproxy_ops::control::HttpNames>,
    /// Its backends, in the order they joined.
    pub backends: Vec<BackendStatus>,
}

impl Backend {
    pub(super) fn new(
        id: u64,
        served: Served,
        tunnel: Arc<Tunnel>,
        weight: u32,
        drained: bool,
        health: Health,
    ) -> Self {
        let hash_key = super::policy::identity_hash(&served.client, &served.service);
        Self {
            id,
            served,
            weight,
            tunnel,
            flows_end: Mutex::default(),
            drained: AtomicBool::new(drained),
            active: AtomicUsize::new(0),
            hash_key,
            health: Mutex::new(health),
        }
    }

    pub(super) fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an active check result reported by the client; returns the new state if it
    /// changed (`true`: healthy).
    pub(crate) fn report(&self, ok: bool, latency: Duration) -> Option<bool> {
        let changed = self.health().report(ok, latency);
        if let Some(healthy) = changed {
            info!(client = %self.served.client, service = %self.served.service, healthy, "backend health changed");
            if !healthy {
                self.end_flows();
            }
        }
        changed
    }

    /// A dial failed before any byte was relayed (passive check); returns whether that ejected
    /// the backend.
    pub(super) fn dial_failed(&self) -> bool {
        let ejected = self.health().dial_failed(Instant::now());
        if ejected {
            warn!(client = %self.served.client, service = %self.served.service, "backend ejected after failed dials");
            self.end_flows();
        }
        ejected
    }

    /// A dial succeeded.
    pub(super) fn dial_succeeded(&self) {
        self.health().dial_succeeded();
    }

    /// The token a new UDP flow on this backend ends with.
    pub(super) fn flows_token(&self) -> CancellationToken {
        self.flows_end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn end_flows(&self) {
        let old = std::mem::take(&mut *self.flows_end.lock().unwrap_or_else(|p| p.into_inner()));
        old.cancel();
    }

    /// Counts a connection as active until the guard is dropped.
    pub(super) fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Drains (no new work, current connections stay) or restores the backend.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    pub(super) fn eligible(&self, now: Instant) -> bool {
        !self.drained.load(Ordering::Relaxed) && self.health().eligible(now)
    }

    pub(super) fn candidate(&self) -> Candidate {
        Candidate {
            id: self.id,
            weight: self.weight,
            active: self.active.load(Ordering::Relaxed),
            hash_key: self.hash_key,
        }
    }

    pub(super) fn status(&self, now: Instant) -> BackendStatus {
        BackendStatus {
            client: self.served.client.to_string(),
            service: self.served.service.to_string(),
            weight: self.weight,
            drained: self.drained.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            health: self.health().view(now),
            traffic: crate::metrics::Traffic::default(),
        }
    }
}
