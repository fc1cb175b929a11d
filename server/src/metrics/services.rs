//! Per-service label sets (`client`, `service`) of the connection and byte counters.
//!
//! A label set exists only while a publication holds a [`ServiceLease`] for it: the registry
//! takes one when it publishes a service and drops it with the publication, and the last lease
//! to go removes the label set from every family. A client has at most
//! [`MAX_LABELED_PER_CLIENT`] label sets; its further services are counted together under
//! `service="(other)"`, a value no service name can take. A connection to a service that holds
//! no lease (withdrawn while it was accepted) is counted nowhere, so no label set is ever made
//! outside a lease.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ServiceLabels;

/// Label sets one client may have; more of its services share `service="(other)"`.
pub const MAX_LABELED_PER_CLIENT: usize = 64;

/// The `service` label of a client's services beyond [`MAX_LABELED_PER_CLIENT`]. Parentheses
/// are not allowed in names, so no service is called this.
pub(crate) const OTHER: &str = "(other)";

/// One label set's counters: shared handles, so a connection looks them up once.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceCounters {
    pub opened: Counter,
    pub active: Gauge,
    /// User → service.
    pub bytes_in: Counter,
    /// Service → user.
    pub bytes_out: Counter,
}

#[derive(Debug)]
struct Leased {
    /// Publications holding it.
    leases: usize,
    /// Its own label set's counters, or the client's [`OTHER`] set's.
    counters: ServiceCounters,
    /// Counted under [`OTHER`] (which this entry then holds a lease on).
    other: bool,
}

#[derive(Debug, Default)]
struct Table {
    leased: HashMap<ServiceLabels, Leased>,
    /// Label sets of each client, [`OTHER`] not included.
    per_client: HashMap<String, usize>,
}

/// The four per-service families, and which label sets are leased.
#[derive(Debug, Default)]
pub(crate) struct ServiceMetrics {
    opened: Family<ServiceLabels, Counter>,
    active: Family<ServiceLabels, Gauge>,
    bytes_in: Family<ServiceLabels, Counter>,
    bytes_out: Family<ServiceLabels, Counter>,
    table: RwLock<Table>,
}

/// Keeps a service's label set while it is published; dropping it releases the set.
#[derive(Debug)]
pub(crate) struct ServiceLease {
    metrics: Arc<ServiceMetrics>,
    labels: ServiceLabels,
}

impl Drop for ServiceLease {
    fn drop(&mut self) {
        self.metrics.release(&self.labels);
    }
}

impl ServiceMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("streams_opened", "Public connections carried to a service", self.opened.clone());
        registry.register("streams_active", "Public connections open now, per service", self.active.clone());
        registry.register("service_bytes_in", "Bytes from users to a service", self.bytes_in.clone());
        registry.register("service_bytes_out", "Bytes from a service to its users", self.bytes_out.clone());
    }

    /// Keeps a label set for `service` of `client` (its own, or the client's [`OTHER`]) until
    /// the lease drops.
    pub fn lease(self: &Arc<Self>, client: &str, service: &str) -> ServiceLease {
        let labels = ServiceLabels { client: client.to_owned(), service: service.to_owned() };
        let mut table = self.lock();
        if let Some(leased) = table.leased.get_mut(&labels) {
            leased.leases += 1;
        } else {
            let own = table.per_client.get(client).copied().unwrap_or(0) < MAX_LABELED_PER_CLIENT;
            let counters = if own {
                *table.per_client.entry(client.to_owned()).or_default() += 1;
                self.create(&labels)
            } else {
                let other = ServiceLabels { client: client.to_owned(), service: OTHER.to_owned() };
                self.hold(&mut table, other)
            };
            table.leased.insert(labels.clone(), Leased { leases: 1, counters, other: !own });
        }
        ServiceLease { metrics: self.clone(), labels }
    }

    /// The counters of `service` of `client`; detached ones (counted nowhere) if it holds no
    /// lease.
    pub fn counters(&self, client: &str, service: &str) -> ServiceCounters {
        let labels = ServiceLabels { client: client.to_owned(), service: service.to_owned() };
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.leased.get(&labels).map(|l| l.counters.clone()).unwrap_or_default()
    }

    /// Each label set's byte counters now, `(labels, in, out)`: the traffic history's sample.
    pub fn bytes(&self) -> Vec<(ServiceLabels, u64, u64)> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        // A service counted under OTHER shares OTHER's counters: OTHER's own entry counts them.
        let own = table.leased.iter().filter(|(_, leased)| !leased.other);
        own.map(|(labels, l)| (labels.clone(), l.counters.bytes_in.get(), l.counters.bytes_out.get())).collect()
    }

    /// Takes a lease on `labels` as its own label set (for [`OTHER`]).
    fn hold(&self, table: &mut Table, labels: ServiceLabels) -> ServiceCounters {
        let leased = table.leased.entry(labels).or_insert_with_key(|labels| Leased {
            leases: 0,
            counters: self.create(labels),
            other: false,
        });
        leased.leases += 1;
        leased.counters.clone()
    }

    fn create(&self, labels: &ServiceLabels) -> ServiceCounters {
        ServiceCounters {
            opened: self.opened.get_or_create(labels).clone(),
            active: self.active.get_or_create(labels).clone(),
            bytes_in: self.bytes_in.get_or_create(labels).clone(),
            bytes_out: self.bytes_out.get_or_create(labels).clone(),
        }
    }

    fn release(&self, labels: &ServiceLabels) {
        let mut table = self.lock();
        let mut next = Some(labels.clone());
        while let Some(labels) = next.take() {
            let Some(leased) = table.leased.get_mut(&labels) else { return };
            leased.leases -= 1;
            if leased.leases > 0 {
                return;
            }
            let other = leased.other;
            table.leased.remove(&labels);
            if other {
                // Counted under the client's OTHER set: release that one instead.
                next = Some(ServiceLabels { client: labels.client, service: OTHER.to_owned() });
                continue;
            }
            self.opened.remove(&labels);
            self.active.remove(&labels);
            self.bytes_in.remove(&labels);
            self.bytes_out.remove(&labels);
            if labels.service != OTHER
                && let Some(count) = table.per_client.get_mut(&labels.client)
            {
                *count -= 1;
                if *count == 0 {
                    table.per_client.remove(&labels.client);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        // Every change is made whole under the lock: a poisoned one is still consistent.
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}
