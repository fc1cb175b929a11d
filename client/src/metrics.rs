//! The client's Prometheus metrics, served at its control API's `GET /metrics`: connections and
//! bytes per published service (bytes as they pass), and, read at scrape time, whether the
//! tunnel is up, the UDP counters, and each proxy's and forward's counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wmproxy_tunnel::listener::ListenerSnapshot;
use wmproxy_tunnel::relay::Meter;
use wmproxy_tunnel::udp::UdpSnapshot;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

/// One tunnel's state at scrape time, for the gauges.
#[derive(Debug)]
pub struct TunnelGauges {
    /// The server's address.
    pub server: String,
    /// Its transport while it is up.
    pub transport: Option<&'static str>,
    /// Its round-trip time while it is up, seconds.
    pub rtt: Option<f64>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// Counters of the client's published services. Labels are bounded by the configured services.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<ServiceLabels, Counter>,
    /// User → service.
    bytes_in: Family<ServiceLabels, Counter>,
    /// Service → user.
    bytes_out: Family<ServiceLabels, Counter>,
    /// The tunnel moved to a new socket: the host's addresses changed (`roaming`).
    rebinds: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let (connections, bytes_in, bytes_out) = (Family::default(), Family::default(), Family::default());
        let mut registry = Registry::with_prefix("wmproxy_client");
        registry.register("connections", "Connections from users to a published service", Family::clone(&connections));
        registry.register("service_bytes_in", "Bytes from users to a service", Family::clone(&bytes_in));
        registry.register("service_bytes_out", "Bytes from a service to its users", Family::clone(&bytes_out));
        let rebinds = Counter::default();
        registry.register(
            "endpoint_rebinds",
            "Times the tunnel moved to a new socket because the host's addresses changed",
            rebinds.clone(),
        );
        Self { registry, connections, bytes_in, bytes_out, rebinds }
    }
}

impl Metrics {
    /// The count of roaming rebinds.
    pub fn rebinds(&self) -> &Counter {
        &self.rebinds
    }

    /// Counts a new connection to `service`; the meter counts its bytes as they pass.
    pub fn connection(&self, service: &str) -> ServiceMeter {
        let labels = ServiceLabels { service: service.to_owned() };
        self.connections.get_or_create(&labels).inc();
        ServiceMeter {
            bytes_in: self.bytes_in.get_or_create(&labels).clone(),
            bytes_out: self.bytes_out.get_or_create(&labels).clone(),
        }
    }

    /// The Prometheus text: the counters, then whether the tunnels are up, on which transport
    /// and at which round-trip time (`tunnels`), `udp`, and the proxies' and forwards'
    /// `listeners`.
    pub fn encode(
        &self,
        tunnels: &[TunnelGauges],
        udp: &UdpSnapshot,
        listeners: &[ListenerSnapshot],
    ) -> Result<String, std::fmt::Error> {
        let mut scraped = Registry::with_prefix("wmproxy_client");
        let first = tunnels.iter().find_map(|t| t.transport);
        let up: Gauge = Gauge::default();
        up.set(i64::from(first.is_some()));
        scraped.register("tunnel_up", "1 while a tunnel to a server is up", up);
        let server_up: Family<ServerLabels, Gauge> = Family::default();
        let rtt: Family<ServerLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for t in tunnels {
            let labels = ServerLabels { server: t.server.clone() };
            server_up.get_or_create(&labels).set(i64::from(t.transport.is_some()));
            if let Some(seconds) = t.rtt {
                rtt.get_or_create(&labels).set(seconds);
            }
        }
        scraped.register("server_tunnel_up", "1 while the tunnel to this server is up", server_up);
        scraped.register("server_rtt_seconds", "The smoothed round-trip time to this server", rtt);
        let on: Family<TransportLabels, Gauge> = Family::default();
        if let Some(transport) = first {
            on.get_or_create(&TransportLabels { transport }).set(1);
        }
        scraped.register(
            "tunnel_transport",
            "1 for the transport of the tunnel while it is up: quic, or tcp (TLS over TCP, where UDP is blocked)",
            on,
        );
        wmproxy_ops::metrics::register_udp(&mut scraped, udp);
        wmproxy_ops::metrics::register_listeners(&mut scraped, listeners);
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scraped)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// One connection to a published service: its bytes, counted as they pass. On the client the
/// TCP side is the service, so what goes into the tunnel is the service's answer.
#[derive(Debug)]
pub struct ServiceMeter {
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Meter for ServiceMeter {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.bytes_in.inc_by(quic_to_tcp);
        self.bytes_out.inc_by(tcp_to_quic);
    }
}
