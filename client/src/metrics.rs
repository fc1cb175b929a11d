//! The client's Prometheus metrics, served at its control API's `GET /metrics`: connections and
//! bytes per published service (added as each connection ends), and, read at scrape time,
//! whether the tunnel is up and the UDP counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wmproxy_tunnel::relay::RelayStats;
use wmproxy_tunnel::udp::UdpSnapshot;

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
}

impl Default for Metrics {
    fn default() -> Self {
        let (connections, bytes_in, bytes_out) = (Family::default(), Family::default(), Family::default());
        let mut registry = Registry::with_prefix("wmproxy_client");
        registry.register("connections", "Connections from users to a published service", Family::clone(&connections));
        registry.register("service_bytes_in", "Bytes from users to a service", Family::clone(&bytes_in));
        registry.register("service_bytes_out", "Bytes from a service to its users", Family::clone(&bytes_out));
        Self { registry, connections, bytes_in, bytes_out }
    }
}

impl Metrics {
    /// Counts a finished connection to `service`, with its bytes if it was relayed.
    pub fn finished(&self, service: &str, stats: Option<&RelayStats>) {
        let labels = ServiceLabels { service: service.to_owned() };
        self.connections.get_or_create(&labels).inc();
        if let Some(stats) = stats {
            self.bytes_in.get_or_create(&labels).inc_by(stats.quic_to_tcp);
            self.bytes_out.get_or_create(&labels).inc_by(stats.tcp_to_quic);
        }
    }

    /// The Prometheus text: the counters, then whether the tunnel is `connected` and `udp`.
    pub fn encode(&self, connected: bool, udp: &UdpSnapshot) -> Result<String, std::fmt::Error> {
        let mut scraped = Registry::with_prefix("wmproxy_client");
        let up: Gauge = Gauge::default();
        up.set(i64::from(connected));
        scraped.register("tunnel_up", "1 while the tunnel to the server is up", up);
        wmproxy_ops::metrics::register_udp(&mut scraped, udp);
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scraped)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}
