//! What the server relayed for each visitor of a private service: label sets `visitor` (the
//! visiting client), `client` and `service` (the private service), for the connections and the
//! bytes each way, and the rendezvous it arranged for direct connections (whose bytes it never
//! sees).
//!
//! A label set is made on a visitor's first connection and removed with the private service's
//! publication ([`VisitorsLease`]). At most [`MAX_VISITOR_LABELS`] exist at once; visitors
//! beyond that are counted under `visitor="(other)"` of their service, a value no client name
//! can take.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use wmproxy_tunnel::relay::Meter;

use super::services::OTHER;

/// Label sets of visitors at once, over every private service.
pub const MAX_VISITOR_LABELS: usize = 256;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VisitorLabels {
    visitor: String,
    client: String,
    service: String,
}

/// One visitor's counters (shared handles).
#[derive(Debug, Clone, Default)]
pub(crate) struct VisitorCounters {
    connections: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    rendezvous: Counter,
    /// The latest thing the visitor asked for was a rendezvous (a direct connection), not a
    /// relayed connection.
    direct: Arc<AtomicBool>,
}

/// A visitor → service relay's bytes, counted as they pass.
impl Meter for VisitorCounters {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.bytes_in.inc_by(tcp_to_quic);
        self.bytes_out.inc_by(quic_to_tcp);
    }
}

/// What a visitor was relayed, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VisitorTraffic {
    /// The visiting client.
    pub visitor: String,
    /// How its latest connections reach the service, as far as this server knows: `relayed`
    /// (through this server) or `direct` (its latest request was a rendezvous).
    pub path: &'static str,
    /// Connections relayed.
    pub connections: u64,
    /// Rendezvous arranged for direct connections.
    pub rendezvous: u64,
    /// The relayed path's round-trip time: the visitor's tunnel's and the service's client's
    /// tunnel's, added (while both are up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Bytes from the visitor to the service.
    pub bytes_in: u64,
    /// Bytes from the service to the visitor.
    pub bytes_out: u64,
}

/// The families and which label sets exist, by private service.
#[derive(Debug, Default)]
pub(crate) struct VisitorMetrics {
    connections: Family<VisitorLabels, Counter>,
    bytes_in: Family<VisitorLabels, Counter>,
    bytes_out: Family<VisitorLabels, Counter>,
    rendezvous: Family<VisitorLabels, Counter>,
    /// (client, service) → visitor → its counters.
    table: Mutex<HashMap<(String, String), HashMap<String, VisitorCounters>>>,
}

/// Keeps a private service's visitor label sets while it is published.
#[derive(Debug)]
pub(crate) struct VisitorsLease {
    metrics: Arc<VisitorMetrics>,
    key: (String, String),
}

impl Drop for VisitorsLease {
    fn drop(&mut self) {
        let removed = self.metrics.lock().remove(&self.key).unwrap_or_default();
        let (client, service) = self.key.clone();
        for visitor in removed.into_keys() {
            let labels = VisitorLabels { visitor, client: client.clone(), service: service.clone() };
            self.metrics.connections.remove(&labels);
            self.metrics.bytes_in.remove(&labels);
            self.metrics.bytes_out.remove(&labels);
            self.metrics.rendezvous.remove(&labels);
        }
    }
}

impl VisitorMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let help = "Connections of a visitor relayed to a private service";
        registry.register("visitor_connections", help, self.connections.clone());
        let help = "Bytes relayed from a visitor to a private service";
        registry.register("visitor_relayed_bytes_in", help, self.bytes_in.clone());
        let help = "Bytes relayed from a private service to a visitor";
        registry.register("visitor_relayed_bytes_out", help, self.bytes_out.clone());
        let help = "Rendezvous the server arranged for a visitor's direct connection to a private service";
        registry.register("visitor_rendezvous", help, self.rendezvous.clone());
    }

    /// Keeps the label sets of `service` of `client`'s visitors until the lease drops.
    pub fn lease(self: &Arc<Self>, client: &str, service: &str) -> VisitorsLease {
        let key = (client.to_owned(), service.to_owned());
        self.lock().entry(key.clone()).or_default();
        VisitorsLease { metrics: self.clone(), key }
    }

    /// Counts one relayed connection of `visitor` to `service` of `client`; the counters its
    /// bytes go to. Detached ones (counted nowhere) if the service holds no lease.
    pub fn visit(&self, visitor: &str, client: &str, service: &str) -> VisitorCounters {
        let counters = self.counters(visitor, client, service);
        counters.connections.inc();
        counters.direct.store(false, Ordering::Relaxed);
        counters
    }

    /// Counts one rendezvous of `visitor` with `service` of `client`.
    pub fn rendezvous(&self, visitor: &str, client: &str, service: &str) {
        let counters = self.counters(visitor, client, service);
        counters.rendezvous.inc();
        counters.direct.store(true, Ordering::Relaxed);
    }

    fn counters(&self, visitor: &str, client: &str, service: &str) -> VisitorCounters {
        let mut table = self.lock();
        let labelled: usize = table.values().map(HashMap::len).sum();
        let Some(visitors) = table.get_mut(&(client.to_owned(), service.to_owned())) else {
            return VisitorCounters::default();
        };
        let visitor = if visitors.contains_key(visitor) || labelled < MAX_VISITOR_LABELS { visitor } else { OTHER };
        let counters = visitors.entry(visitor.to_owned()).or_insert_with_key(|visitor| {
            let labels =
                VisitorLabels { visitor: visitor.clone(), client: client.to_owned(), service: service.to_owned() };
            VisitorCounters {
                connections: self.connections.get_or_create(&labels).clone(),
                bytes_in: self.bytes_in.get_or_create(&labels).clone(),
                bytes_out: self.bytes_out.get_or_create(&labels).clone(),
                rendezvous: self.rendezvous.get_or_create(&labels).clone(),
                direct: Arc::default(),
            }
        });
        counters.clone()
    }

    /// What each visitor of `service` of `client` was relayed, by visitor name.
    pub fn traffic(&self, client: &str, service: &str) -> Vec<VisitorTraffic> {
        let table = self.lock();
        let Some(visitors) = table.get(&(client.to_owned(), service.to_owned())) else { return Vec::new() };
        let mut all: Vec<VisitorTraffic> = visitors
            .iter()
            .map(|(visitor, c)| VisitorTraffic {
                visitor: visitor.clone(),
                path: if c.direct.load(Ordering::Relaxed) { "direct" } else { "relayed" },
                connections: c.connections.get(),
                rendezvous: c.rendezvous.get(),
                rtt_ms: None,
                bytes_in: c.bytes_in.get(),
                bytes_out: c.bytes_out.get(),
            })
            .collect();
        all.sort_by(|a, b| a.visitor.cmp(&b.visitor));
        all
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), HashMap<String, VisitorCounters>>> {
        // Whole inserts and removes only: a poisoned lock still holds a consistent table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}
