//! The server's Prometheus metrics (prometheus-client), served at the control API's `/metrics`.
//!
//! Counters bumped on the network path live in [`Metrics`] (relaxed atomics). State that lives
//! elsewhere (UDP counters, backends' health) is read at scrape time into a second registry,
//! so nothing is copied on the hot path.
//!
//! Label sets are bounded: `client` and `service` label sets exist only while a service is
//! published, at most [`services::MAX_LABELED_PER_CLIENT`] per client (see [`services`]);
//! visitors of private services at most `visitors::MAX_VISITOR_LABELS` at once;
//! every other label takes a fixed set of values.

mod services;
mod visitors;

use std::sync::Arc;

pub use services::MAX_LABELED_PER_CLIENT;
pub(crate) use services::{ServiceLease, ServiceMetrics};
pub use visitors::VisitorTraffic;
pub(crate) use visitors::{VisitorMetrics, VisitorsLease};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wmproxy_tunnel::Side;
use wmproxy_tunnel::listener::ListenerSnapshot;
use wmproxy_tunnel::relay::Meter;
use wmproxy_tunnel::udp::UdpSnapshot;

use crate::dashboard::events::{EventKind, Events};

/// A published service: the client it lives on and its name there.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub client: String,
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupBackendLabels {
    group: String,
    client: String,
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

/// What a limit refused: the `cause` label of `wmproxy_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A new tunnel from an address that has its share of connections waiting to authenticate.
    UnauthenticatedPerAddress,
    /// A connection waiting to authenticate, closed to make room for a newer one.
    UnauthenticatedEvicted,
    /// A connection without a correct proof within `auth_timeout_secs`.
    AuthTimeout,
    /// A QUIC datagram before authentication.
    EarlyDatagram,
    /// A correct proof while `max_clients` tunnels are up.
    ServerFull,
    /// A correct proof for a name whose live session, on another machine, answered.
    NameInUse,
    /// A correct proof with the shared token while `max_shared_clients` of its names are live.
    SharedTokenFull,
    /// A public connection from a user with `max_connections_per_user` open.
    ConnectionsPerUser,
    /// A vhost request over its user's `user_requests_per_minute` (answered `429`).
    RequestRate,
    /// A connection to the vhost, HTTPS or a proxy while `max_silent_connections` others have
    /// not sent anything yet.
    SilentConnections,
    /// A public connection to a client that has `max_streams_per_client` open.
    StreamsPerClient,
    /// A visit to a private service without its secret, or from a client it does not allow.
    VisitForbidden,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::UnauthenticatedPerAddress => "unauthenticated_per_address",
            Self::UnauthenticatedEvicted => "unauthenticated_evicted",
            Self::AuthTimeout => "auth_timeout",
            Self::EarlyDatagram => "early_datagram",
            Self::ServerFull => "server_full",
            Self::NameInUse => "name_in_use",
            Self::SharedTokenFull => "shared_token_full",
            Self::ConnectionsPerUser => "connections_per_user",
            Self::RequestRate => "request_rate",
            Self::SilentConnections => "silent_connections",
            Self::StreamsPerClient => "streams_per_client",
            Self::VisitForbidden => "visit_forbidden",
        }
    }
}

/// What a published service (or backend) carried: connections, and their bytes as they pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Connections opened to it.
    pub connections: u64,
    /// Connections open now.
    pub active: i64,
    /// Bytes from users to the service (counted as they pass).
    pub bytes_in: u64,
    /// Bytes from the service to users (counted as they pass).
    pub bytes_out: u64,
}

/// A group backend as the scrape sees it.
#[derive(Debug, Clone)]
pub(crate) struct BackendHealth {
    pub group: String,
    pub client: String,
    pub service: String,
    /// Receives new work: healthy and not drained.
    pub up: bool,
}

/// The state that lives elsewhere, read at scrape time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    pub udp: UdpSnapshot,
    pub backends: Vec<BackendHealth>,
    /// Connections waiting to authenticate now.
    pub unauthenticated: usize,
    /// The proxies' counters.
    pub proxies: Vec<ListenerSnapshot>,
}

/// Everything counted as it happens.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub tunnels_accepted: Counter,
    pub tunnels_active: Gauge,
    /// Tunnels open now, by the transport that carries them.
    tunnels_by_transport: Family<TransportLabels, Gauge>,
    pub handshakes_failed: Counter,
    pub auth_failures: Counter,
    /// Connections and bytes per published service.
    pub services: Arc<ServiceMetrics>,
    /// Per-visitor counters of private services.
    pub visitors: Arc<VisitorMetrics>,
    pub check_latency: Histogram,
    /// Connections that could not be carried, by whose fault.
    open_failures: Family<SideLabels, Counter>,
    /// Connections refused by a limit, by cause.
    refused: Family<CauseLabels, Counter>,
    /// QUIC retries sent to validate a new address under load.
    pub address_validations: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub last_reload_ok: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Connections the peer closed (or let time out) during the QUIC handshake: a client
    /// restarting, a port scanner. Routine, so logged at debug only.
    pub handshakes_abandoned: Counter,
    /// Recent events for the dashboard; refusals are recorded here as they are counted.
    pub events: Arc<Events>,
    /// When the server started (the dashboard's uptime).
    pub started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            tunnels_accepted: Counter::default(),
            tunnels_active: Gauge::default(),
            tunnels_by_transport: Family::default(),
            handshakes_failed: Counter::default(),
            auth_failures: Counter::default(),
            services: Arc::default(),
            visitors: Arc::default(),
            // 1 ms to ~16 s.
            check_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            open_failures: Family::default(),
            refused: Family::default(),
            address_validations: Counter::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            last_reload_ok: Gauge::default(),
            handshakes_abandoned: Counter::default(),
            events: Arc::default(),
            started: std::time::Instant::now(),
        };
        // The config the server started with was valid: an alert on `== 0` must not fire on a
        // fresh server that has not been reloaded yet.
        m.last_reload_ok.set(1);
        let mut registry = Registry::with_prefix("wmproxy");
        registry.register(
            "tunnels_accepted",
            "Tunnels that completed the handshake and authenticated",
            m.tunnels_accepted.clone(),
        );
        registry.register("tunnels_active", "Tunnels open now", m.tunnels_active.clone());
        registry.register(
            "tunnels_by_transport",
            "Tunnels open now, by transport: quic, or tcp (TLS on TCP, where UDP is blocked)",
            m.tunnels_by_transport.clone(),
        );
        registry.register(
            "handshakes_failed",
            "Tunnel handshakes that failed or timed out (not auth)",
            m.handshakes_failed.clone(),
        );
        registry.register(
            "handshakes_abandoned",
            "Connections the peer closed or abandoned during the QUIC handshake (a client restarting, a scanner)",
            m.handshakes_abandoned.clone(),
        );
        registry.register("auth_failures", "Tunnels refused for bad credentials or version", m.auth_failures.clone());
        m.services.register(&mut registry);
        m.visitors.register(&mut registry);
        registry.register("health_check_latency_seconds", "Active health check durations", m.check_latency.clone());
        registry.register(
            "open_failures",
            "User connections that could not be carried to a service, by side (user, backend, tunnel, internal)",
            m.open_failures.clone(),
        );
        registry.register(
            "refused",
            "Connections refused by a limit, by cause (unauthenticated_per_address, unauthenticated_evicted, \
             auth_timeout, early_datagram, server_full, name_in_use, shared_token_full, connections_per_user, request_rate, silent_connections)",
            m.refused.clone(),
        );
        registry.register(
            "address_validations",
            "QUIC retries sent to make a new address prove itself while many connections wait to authenticate",
            m.address_validations.clone(),
        );
        registry.register("reloads", "Config reloads attempted", m.reloads.clone());
        registry.register("reload_failures", "Config reloads refused (invalid config)", m.reload_failures.clone());
        registry.register(
            "last_reload_success",
            "0 after a reload was refused, 1 after one applied, and 1 at start (the config loaded at start was valid)",
            m.last_reload_ok.clone(),
        );
        Self { registry, ..m }
    }
}

/// Counts one public connection to a service as active until dropped, and adds its bytes.
/// Holds the service's counters themselves (shared handles), so the label lookup happens once.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    active: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// Counts one authenticated tunnel as active until dropped.
#[derive(Debug)]
pub(crate) struct TunnelGuard<'a>(&'a Metrics, &'static str);

impl Drop for TunnelGuard<'_> {
    fn drop(&mut self) {
        self.0.tunnels_active.dec();
        self.0.tunnels_by_transport.get_or_create(&TransportLabels { transport: self.1 }).dec();
    }
}

impl Metrics {
    /// Counts a tunnel on `transport` that authenticated, active until the guard drops.
    pub fn tunnel(&self, transport: &'static str) -> TunnelGuard<'_> {
        self.tunnels_accepted.inc();
        self.tunnels_active.inc();
        self.tunnels_by_transport.get_or_create(&TransportLabels { transport }).inc();
        TunnelGuard(self, transport)
    }

    /// Starts counting a public connection to `service` of `client`.
    pub fn stream(&self, client: &str, service: &str) -> StreamGuard {
        let counters = self.services.counters(client, service);
        counters.opened.inc();
        counters.active.inc();
        StreamGuard { active: counters.active, bytes_in: counters.bytes_in, bytes_out: counters.bytes_out }
    }

    /// Counts a connection that could not be carried, by whose fault.
    pub fn open_failed(&self, side: Side) {
        self.open_failures.get_or_create(&SideLabels { side: side.as_str() }).inc();
    }

    /// Counts a refusal by a limit.
    pub fn refused(&self, cause: Refusal) {
        self.refused.get_or_create(&CauseLabels { cause: cause.label() }).inc();
        self.events.record(EventKind::Refused, format!("refused by a limit: {}", cause.label()));
    }

    /// What `service` of `client` carried so far (zero if nothing yet; the client's `(other)`
    /// totals for a service beyond its labelled ones).
    pub fn traffic(&self, client: &str, service: &str) -> Traffic {
        let counters = self.services.counters(client, service);
        Traffic {
            connections: counters.opened.get(),
            active: counters.active.get(),
            bytes_in: counters.bytes_in.get(),
            bytes_out: counters.bytes_out.get(),
        }
    }

    /// The Prometheus text of every metric, with the scrape-time state `scraped`.
    pub fn encode(&self, scraped: &Scrape) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scrape(scraped))?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// A public connection's bytes, counted as they pass: its TCP side is the user.
impl Meter for StreamGuard {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.bytes_in.inc_by(tcp_to_quic);
        self.bytes_out.inc_by(quic_to_tcp);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// The state read at scrape time: UDP counters and backends' health.
fn scrape(scraped: &Scrape) -> Registry {
    let mut registry = Registry::with_prefix("wmproxy");
    wmproxy_ops::metrics::register_udp(&mut registry, &scraped.udp);
    wmproxy_ops::metrics::register_listeners(&mut registry, &scraped.proxies);

    let healthy: Family<GroupBackendLabels, Gauge> = Family::default();
    for b in &scraped.backends {
        let labels =
            GroupBackendLabels { group: b.group.clone(), client: b.client.clone(), service: b.service.clone() };
        healthy.get_or_create(&labels).set(i64::from(b.up));
    }
    registry.register("backend_healthy", "1 if a group backend receives new work, else 0", healthy);
    let waiting: Gauge = Gauge::default();
    waiting.set(i64::try_from(scraped.unauthenticated).unwrap_or(i64::MAX));
    registry.register("unauthenticated", "Connections waiting to authenticate now", waiting);
    registry
}
