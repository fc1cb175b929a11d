//! Counters of the UDP path, shared by every flow table of one server or client.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters; cheap to bump from any task (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct UdpStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`UdpStats`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct UdpSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl UdpStats {
            /// Reads every counter.
            pub fn snapshot(&self) -> UdpSnapshot {
                UdpSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Flows in the flow tables now (a gauge).
    active_flows,
    /// Flows set up since start.
    flows_opened,
    /// Flows closed by the idle sweep.
    flows_expired,
    /// Flows the other end refused (limit, egress policy, unknown service); their queued
    /// packets are lost.
    flows_refused,
    /// Packets sent into the tunnel as datagrams.
    datagrams_sent,
    /// Datagrams received from the tunnel and delivered to a socket.
    datagrams_received,
    /// Packets sent on a flow stream: too large for a datagram, or sent before the flow was
    /// confirmed.
    stream_packets_sent,
    /// Packets received on a flow stream.
    stream_packets_received,
    /// Packets dropped: a flow limit was reached.
    dropped_flow_limit,
    /// Packets dropped: no tunnel to the server (client forwards only).
    dropped_no_tunnel,
    /// Datagrams dropped: their flow id names no open flow (for example, it just ended).
    dropped_unknown_flow,
    /// Datagrams dropped: empty or a truncated flow id.
    dropped_malformed,
    /// Packets dropped: the queue toward a flow stream was full.
    dropped_queue_full,
    /// Packets dropped: the local socket would not take them (full buffer, ICMP error).
    dropped_socket,
    /// Packets dropped: over their service's bandwidth limit on this end.
    dropped_bandwidth,
}

impl UdpSnapshot {
    /// The packet drop counters by cause (`flow_limit`, `no_tunnel`, …), for metrics.
    pub fn drops(&self) -> [(&'static str, u64); 7] {
        [
            ("flow_limit", self.dropped_flow_limit),
            ("no_tunnel", self.dropped_no_tunnel),
            ("unknown_flow", self.dropped_unknown_flow),
            ("malformed", self.dropped_malformed),
            ("queue_full", self.dropped_queue_full),
            ("socket", self.dropped_socket),
            ("bandwidth", self.dropped_bandwidth),
        ]
    }
}

impl UdpStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
