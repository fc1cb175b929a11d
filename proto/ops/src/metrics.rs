//! Prometheus metrics both ends expose (prometheus-client), read at scrape time: the UDP
//! counters from a [`UdpSnapshot`], and each proxy's and forward's from its
//! [`ListenerSnapshot`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use wmproxy_tunnel::listener::{ListenerSnapshot, Refusal};
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// `proxy` or `forward`.
    role: String,
    /// `socks5`, `http`, `tcp`, `udp`, `ws`.
    kind: String,
    listen: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerCauseLabels {
    role: String,
    kind: String,
    listen: String,
    cause: String,
}

/// Registers what each proxy and forward listener carried (connections, active, bytes as they
/// pass) and refused (by cause), labelled by `role`, `kind` and `listen`: as many label sets as
/// configured listeners.
pub fn register_listeners(registry: &mut Registry, listeners: &[ListenerSnapshot]) {
    let (connections, bytes_in, bytes_out): (Family<ListenerLabels, Counter>, Family<_, Counter>, Family<_, Counter>) =
        Default::default();
    let active: Family<ListenerLabels, Gauge> = Family::default();
    let refused: Family<ListenerCauseLabels, Counter> = Family::default();
    for l in listeners {
        let labels = ListenerLabels { role: l.role.to_owned(), kind: l.kind.to_owned(), listen: l.listen.to_string() };
        connections.get_or_create(&labels).inc_by(l.connections);
        active.get_or_create(&labels).set(l.active);
        bytes_in.get_or_create(&labels).inc_by(l.bytes_in);
        bytes_out.get_or_create(&labels).inc_by(l.bytes_out);
        for cause in Refusal::ALL {
            let n = l.refused.get(cause.label()).copied().unwrap_or(0);
            let labels = ListenerCauseLabels {
                role: labels.role.clone(),
                kind: labels.kind.clone(),
                listen: labels.listen.clone(),
                cause: cause.label().to_owned(),
            };
            refused.get_or_create(&labels).inc_by(n);
        }
    }
    registry.register("listener_connections", "Connections accepted by a proxy or forward", connections);
    registry.register("listener_connections_active", "Connections open now on a proxy or forward", active);
    registry.register("listener_bytes_in", "Bytes from users of a proxy or forward, as they pass", bytes_in);
    registry.register("listener_bytes_out", "Bytes to users of a proxy or forward, as they pass", bytes_out);
    registry.register(
        "listener_refused",
        "Connections a proxy or forward could not carry, by cause (egress, unreachable, timeout, no_tunnel, busy, \
         auth, request, other)",
        refused,
    );
}
