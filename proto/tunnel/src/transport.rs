//! The QUIC transport both ends use: one tuned [`quinn::TransportConfig`] and UDP sockets with
//! large kernel buffers.
//!
//! Each value below carries the reason it was chosen; the figures come from `wmproxy-bench`
//! on a 2-core loopback machine (see `bench/README.md`).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt, congestion};
use socket2::{Domain, Protocol, Socket, Type};
use wmproxy_config::Congestion;
use wmproxy_wire::TunnelLimits;

use crate::conn::Conn;

/// Kernel UDP buffer size asked for on both ends. With the Linux default (208 KiB) quinn has
/// been seen to lose 0.5–2 % of packets on loopback at full speed, which halves its window;
/// 4 MiB removed the loss. (The bench's own run lost nothing either way; the headroom is for
/// bursts from many clients.) The kernel caps the value at `net.core.{r,w}mem_max`.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// How long a silent tunnel stays up. Keep-alives ([`KEEP_ALIVE`]) keep a healthy one busy.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep-alive period: well below [`IDLE_TIMEOUT`] and below common NAT UDP timeouts (30 s+).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Bytes of incoming QUIC datagrams (UDP flows) quinn buffers for us; beyond it the oldest are
/// dropped. 2 MiB holds about 1,700 full-size packets: 30 ms at 500 Mbit/s while our datagram
/// reader is descheduled.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 2 * 1024 * 1024;

/// The whole-connection receive window of a peer that has not authenticated: room for its
/// Hello (one frame, at most [`wmproxy_wire::MAX_FRAME_LEN`] bytes) and no more, so a few
/// hundred silent or hostile connections cost the server little memory. See
/// [`TransportTuning::to_pre_auth_config`].
pub const PRE_AUTH_WINDOW: u32 = 2 * wmproxy_wire::MAX_FRAME_LEN as u32;

/// Bytes of outgoing datagrams quinn queues while congestion control holds them back; beyond
/// it the oldest are dropped (UDP semantics: late packets are worth less than new ones).
pub const DATAGRAM_SEND_BUFFER: usize = 1024 * 1024;

/// Limits and windows of one tunnel.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Streams the peer may have open towards us at once (each is one TCP connection). quinn
    /// returns stream credit only in batches of 1/8 of its window, so [`Self::to_config`] adds
    /// that slack: this many streams are always usable.
    pub max_concurrent_streams: u32,
    /// Per-stream receive window, bytes. Must cover one stream's bandwidth-delay product.
    pub stream_window: u32,
    /// Whole-connection receive window, bytes; bounds the memory one peer can make us buffer.
    pub connection_window: u32,
    /// Largest UDP payload MTU discovery may try.
    pub mtu_upper_bound: u16,
    /// How often a quiet tunnel sends a keep-alive: below [`IDLE_TIMEOUT`] and below the
    /// UDP mapping timeout of every NAT on the path. `None` sends none: the server's choice,
    /// so that its idle timer runs from the client's last packet (see
    /// `wmproxy_server`'s transport tuning).
    pub keep_alive: Option<Duration>,
    /// The congestion controller of what this end sends.
    pub congestion: Congestion,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            // A placeholder: the server sets its own from its limits (`client_opened`), and a
            // client starts at 0 and follows the server's Welcome (`allow_server_streams`).
            max_concurrent_streams: 4096,
            // 4 MiB per stream: a 1 Gbit/s path with 30 ms RTT needs ~3.75 MiB in flight.
            stream_window: 4 * 1024 * 1024,
            // 16 MiB per connection: several bulk streams at full speed, and a bound on what one
            // peer may make us hold.
            connection_window: 16 * 1024 * 1024,
            // quinn's default, within Ethernet's MTU. Measured on loopback (MTU 65536, median of
            // 5 runs, one stream): 1452 → 4.17 Gbit/s, 8952 → 3.58, 16384 → 3.54, 65527 → 3.42.
            // GSO already batches syscalls, so larger datagrams only add per-packet cost.
            mtu_upper_bound: 1452,
            keep_alive: Some(KEEP_ALIVE),
            congestion: Congestion::default(),
        }
    }
}

impl TransportTuning {
    /// Builds the quinn transport config.
    pub fn to_config(&self) -> TransportConfig {
        let mut config = TransportConfig::default();
        config
            .max_concurrent_bidi_streams(self.stream_credit())
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.connection_window))
            .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
            .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
            .keep_alive_interval(self.keep_alive)
            .max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s fits a QUIC idle timeout")));
        let mut mtu = MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_upper_bound);
        config.mtu_discovery_config(Some(mtu));
        config.congestion_controller_factory(match self.congestion {
            Congestion::Cubic => Arc::new(congestion::CubicConfig::default()),
            Congestion::NewReno => Arc::new(congestion::NewRenoConfig::default()),
            Congestion::Bbr => Arc::new(crate::congestion::BbrConfig),
            Congestion::QuinnBbr => Arc::new(congestion::BbrConfig::default()),
        });
        // Segmentation offload (GSO) stays on, as quinn defaults: off, one stream fell from
        // ~3.4 to 1.4 Gbit/s on the bench.
        config
    }

    /// The stream count the peer is given: [`Self::max_concurrent_streams`] plus the slack
    /// quinn's batched credit needs.
    fn stream_credit(&self) -> VarInt {
        stream_credit(self.max_concurrent_streams)
    }

    /// The server's config for new connections: as [`Self::to_config`], but until
    /// [`Self::open_up`] the peer may open one stream (the control stream) and have at most
    /// [`PRE_AUTH_WINDOW`] bytes unread in all. The per-stream window cannot change after the
    /// handshake, so it stays full; the connection window bounds it meanwhile.
    ///
    /// QUIC datagrams must be offered in the handshake, so their buffer is full-size too: the
    /// server reads them from the first moment, and one before authentication ends the
    /// connection.
    pub fn to_pre_auth_config(&self) -> TransportConfig {
        let mut config = self.to_config();
        config.max_concurrent_bidi_streams(VarInt::from_u32(1)).receive_window(VarInt::from_u32(PRE_AUTH_WINDOW));
        config
    }

    /// The same windows for the TCP transport, with its keepalive ping every [`KEEP_ALIVE`]
    /// (TCP has no idle timer of its own to keep a NAT's mapping) and [`IDLE_TIMEOUT`].
    pub fn tcp_settings(&self) -> crate::conn::tcp::TcpSettings {
        crate::conn::tcp::TcpSettings {
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            keep_alive: self.keep_alive.unwrap_or(KEEP_ALIVE),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Gives a connection accepted with [`Self::to_pre_auth_config`] (or, on the TCP transport,
    /// with the pre-auth window) this tuning's full stream count and window, once its peer has
    /// authenticated under `limits`.
    pub fn open_up(&self, conn: &Conn, limits: &TunnelLimits) {
        match conn {
            Conn::Quic(conn) => {
                conn.set_max_concurrent_bi_streams(self.stream_credit());
                conn.set_receive_window(VarInt::from_u32(self.connection_window));
            }
            Conn::Tcp(conn) => conn.open_up(&self.tcp_settings(), client_opened(limits) as usize),
        }
    }
}

/// The stream credit that keeps `streams` streams always usable: quinn returns credit only in
/// batches of 1/8 of the window, so that much again (and one) is added. quinn keeps an entry per
/// stream of credit (about 40 bytes a side), so credit follows the limits rather than a bound
/// far above them.
fn stream_credit(streams: u32) -> VarInt {
    VarInt::from_u32(streams.saturating_add(streams / 8).saturating_add(1))
}

/// Streams a client may open towards the server at once under `limits`: its forwards and
/// proxies, its UDP flows (each may ride a stream) and the control stream.
pub fn client_opened(limits: &TunnelLimits) -> u32 {
    limits.streams.saturating_add(limits.udp_flows).saturating_add(1)
}

/// Streams the server may open towards a client at once under `limits`: users of its services,
/// and UDP flows (each may ride a stream).
pub fn server_opened(limits: &TunnelLimits) -> u32 {
    limits.streams.saturating_add(limits.udp_flows)
}

/// `limits` as a client follows them: within what a server's config may set
/// ([`wmproxy_config::ranges::MAX_STREAMS`]), at least one stream. quinn allocates per stream of
/// credit, so a server announcing more (a bug, or a hostile server behind a leaked
/// fingerprint) cannot make a client allocate without bound.
pub fn bounded(limits: TunnelLimits) -> TunnelLimits {
    let max = u32::try_from(*wmproxy_config::ranges::MAX_STREAMS.end()).unwrap_or(u32::MAX);
    TunnelLimits { streams: limits.streams.clamp(1, max), udp_flows: limits.udp_flows.min(max) }
}

/// Gives the server on `conn` the stream credit `limits` need ([`server_opened`]): the client's
/// side of following the server's limits, once its Welcome has told them.
pub fn allow_server_streams(conn: &Conn, limits: &TunnelLimits) {
    match conn {
        Conn::Quic(conn) => conn.set_max_concurrent_bi_streams(stream_credit(server_opened(limits))),
        Conn::Tcp(conn) => conn.allow_streams(server_opened(limits) as usize),
    }
}

/// Binds a UDP socket for a quinn endpoint, with [`UDP_BUFFER_BYTES`] kernel buffers.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    dual_stack_or_v4(addr, |addr| bind_udp_with(addr, UDP_BUFFER_BYTES))
}

/// `bind(addr)`; where `addr` is `[::]` (every address, both IP versions: the defaults) and
/// this host has no IPv6 (a kernel booted without it), `0.0.0.0` on the same port instead,
/// with a warning.
pub fn dual_stack_or_v4<T>(addr: SocketAddr, bind: impl Fn(SocketAddr) -> io::Result<T>) -> io::Result<T> {
    match bind(addr) {
        Err(e) if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            let bound = bind(v4).map_err(|_| e)?;
            tracing::warn!(%addr, %v4, "cannot bind IPv6 here; listening on IPv4 only");
            Ok(bound)
        }
        other => other,
    }
}

/// Binds a non-blocking UDP socket with kernel buffers of `buffer` bytes (capped by the kernel
/// at `net.core.{r,w}mem_max`).
pub fn bind_udp_with(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer only costs speed.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Creates a quinn endpoint on `socket`, serving `server` if given.
pub fn endpoint(socket: UdpSocket, server: Option<quinn::ServerConfig>) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, Arc::new(quinn::TokioRuntime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_limits_are_bounded_by_what_a_config_may_set() {
        let huge = bounded(TunnelLimits { streams: u32::MAX, udp_flows: u32::MAX });
        assert_eq!(huge, TunnelLimits { streams: 1_000_000, udp_flows: 1_000_000 });
        let none = bounded(TunnelLimits { streams: 0, udp_flows: 0 });
        assert_eq!(none, TunnelLimits { streams: 1, udp_flows: 0 });
        let usual = TunnelLimits { streams: 1024, udp_flows: 256 };
        assert_eq!(bounded(usual), usual);
        // The credit a client then grants stays within u32 and a varint.
        assert_eq!(stream_credit(server_opened(&huge)).into_inner(), 2_000_000 + 250_000 + 1);
    }
}
