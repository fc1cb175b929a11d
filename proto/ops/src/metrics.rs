//! Prometheus metrics both ends expose (prometheus-client): the UDP counters, read at scrape
//! time from a [`UdpSnapshot`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use wmproxy_tunnel::udp::UdpSnapshot;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

/// Registers `udp`'s flows, datagrams and drops (by cause) in `registry`.
pub fn register_udp(registry: &mut Registry, udp: &UdpSnapshot) {
    let flows: Gauge = Gauge::default();
    flows.set(i64::try_from(udp.active_flows).unwrap_or(i64::MAX));
    registry.register("udp_flows_active", "UDP flows open now", flows);
    let opened: Counter = Counter::default();
    opened.inc_by(udp.flows_opened);
    registry.register("udp_flows_opened", "UDP flows set up", opened);
    let sent: Counter = Counter::default();
    sent.inc_by(udp.datagrams_sent);
    registry.register("udp_datagrams_sent", "UDP packets sent into tunnels as QUIC datagrams", sent);
    let received: Counter = Counter::default();
    received.inc_by(udp.datagrams_received);
    registry.register("udp_datagrams_received", "QUIC datagrams received and delivered", received);
    let dropped: Family<CauseLabels, Counter> = Family::default();
    for (cause, n) in udp.drops() {
        dropped.get_or_create(&CauseLabels { cause: cause.to_owned() }).inc_by(n);
    }
    registry.register("udp_datagrams_dropped", "UDP packets dropped, by cause", dropped);
}
