//! What a proxy or forward listener carried, on either end: [`ListenerStats`] counts its
//! connections, their bytes as they pass, and its refusals by cause; [`access_log`] writes the
//! line of one finished connection. Both ends report them the same way as their services: in
//! the access log (`wmproxy::access`), in `/metrics` (read at scrape time) and in `/status`.
//! Label sets are bounded by the configured listeners.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;
use tracing::info;
use wmproxy_wire::OpenResult;

use crate::datastream::DataStreamError;
use crate::relay::{Meter, RelayStats};
use crate::upstream::OpenError;

/// Why a listener's connection was not carried: the `cause` label of the refusal counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The far end's egress policy refused the target.
    Egress,
    /// The target refused the connection, reset it, or could not be reached.
    Unreachable,
    /// The target, or the far end, did not answer in time.
    Timeout,
    /// There was no tunnel to the far end (the client reconnecting, the `via` client or a
    /// visited service's client away).
    NoTunnel,
    /// A limit of streams or connections was reached.
    Busy,
    /// Wrong or missing proxy credentials, or a visitor's wrong secret.
    Auth,
    /// A malformed or unsupported proxy request, or none in time.
    Request,
    /// Anything else (the tunnel failed while the stream was set up).
    Other,
}

impl Refusal {
    /// Every cause, in label order.
    pub const ALL: [Refusal; 8] = [
        Self::Egress,
        Self::Unreachable,
        Self::Timeout,
        Self::NoTunnel,
        Self::Busy,
        Self::Auth,
        Self::Request,
        Self::Other,
    ];

    /// The `cause` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::NoTunnel => "no_tunnel",
            Self::Busy => "busy",
            Self::Auth => "auth",
            Self::Request => "request",
            Self::Other => "other",
        }
    }

    /// The cause of a failed open.
    pub fn of(e: &OpenError) -> Self {
        match e {
            OpenError::Refused(OpenResult::NotAllowed) => Self::Egress,
            OpenError::Refused(OpenResult::Timeout) | OpenError::Failed(DataStreamError::Timeout) => Self::Timeout,
            OpenError::Refused(OpenResult::Busy) | OpenError::Busy => Self::Busy,
            OpenError::Refused(OpenResult::Forbidden) => Self::Auth,
            OpenError::Refused(OpenResult::Offline) => Self::NoTunnel,
            OpenError::Refused(_) | OpenError::NoneEligible | OpenError::AllFailed { .. } => Self::Unreachable,
            OpenError::TunnelGone | OpenError::Failed(DataStreamError::Connection(_)) => Self::NoTunnel,
            OpenError::Failed(_) => Self::Other,
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(Self::ALL.len() - 1)
    }
}

/// The counters of one proxy or forward listener.
#[derive(Debug)]
pub struct ListenerStats {
    /// What it is: `socks5`, `http` (proxies), `tcp`, `udp`, `ws` (forwards).
    pub kind: &'static str,
    /// `proxy` or `forward`.
    pub role: &'static str,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where its connections go: a forward's target, a server proxy's `via`; empty for a
    /// client's proxy (each connection names its own target).
    pub to: String,
    connections: AtomicU64,
    active: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

/// A listener's counters at one moment, as `/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerSnapshot {
    /// `proxy` or `forward`.
    pub role: &'static str,
    /// `socks5`, `http`, `tcp`, `udp` or `ws`.
    pub kind: &'static str,
    /// Where it listens.
    pub listen: SocketAddr,
    /// A forward's target, a server proxy's `via`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub active: i64,
    /// Bytes from users (counted as they pass).
    pub bytes_in: u64,
    /// Bytes to users (counted as they pass).
    pub bytes_out: u64,
    /// Connections refused, by cause (only causes seen).
    pub refused: std::collections::BTreeMap<&'static str, u64>,
}

impl ListenerStats {
    /// New counters for the listener `role` (`proxy`, `forward`) of `kind` on `listen`, whose
    /// connections go `to`.
    pub fn new(role: &'static str, kind: &'static str, listen: SocketAddr, to: String) -> Arc<Self> {
        Arc::new(Self {
            kind,
            role,
            listen,
            to,
            connections: AtomicU64::new(0),
            active: AtomicI64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            refused: Default::default(),
        })
    }

    /// Counts a new connection, open until the guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.connections.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        Open(self.clone())
    }

    /// Counts a connection refused for `cause`.
    pub fn refused(&self, cause: Refusal) {
        self.refused[cause.index()].fetch_add(1, Relaxed);
    }

    /// Connections refused for `cause` so far.
    pub fn refused_for(&self, cause: Refusal) -> u64 {
        self.refused[cause.index()].load(Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> ListenerSnapshot {
        ListenerSnapshot {
            role: self.role,
            kind: self.kind,
            listen: self.listen,
            to: self.to.clone(),
            connections: self.connections.load(Relaxed),
            active: self.active.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            refused: Refusal::ALL.iter().map(|c| (c.label(), self.refused_for(*c))).filter(|(_, n)| *n > 0).collect(),
        }
    }
}

/// The TCP side of a proxy or forward is its user: bytes from it are `bytes_in`.
impl Meter for ListenerStats {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.bytes_in.fetch_add(tcp_to_quic, Relaxed);
        self.bytes_out.fetch_add(quic_to_tcp, Relaxed);
    }
}

/// One open connection of a listener; dropping it counts it closed.
#[derive(Debug)]
pub struct Open(Arc<ListenerStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// The access log line of one finished proxy or forward connection (target `wmproxy::access`,
/// as services have): the listener, the user, the target, the bytes each way as they passed
/// (a connection cut half-way reports what it carried), the duration and the result (`ok`, or
/// why not).
pub fn access_log(
    listener: &ListenerStats,
    (user, target): (SocketAddr, &str),
    started: Instant,
    carried: RelayStats,
    result: &str,
) {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    info!(
        target: "wmproxy::access",
        listener = listener.role,
        kind = listener.kind,
        listen = %listener.listen,
        user = %user,
        to = target,
        bytes_in = carried.tcp_to_quic,
        bytes_out = carried.quic_to_tcp,
        duration_ms,
        result,
        "connection finished"
    );
}

/// A byte stream towards the far end (a tunnel stream that hyper drives) whose bytes are
/// counted as they pass: writes go to the far end (`tcp_to_quic`), reads come from it
/// (`quic_to_tcp`).
#[derive(Debug)]
pub struct Metered<T, M> {
    inner: T,
    meter: M,
}

impl<T, M: Meter> Metered<T, M> {
    /// Counts `inner`'s bytes in `meter`.
    pub fn new(inner: T, meter: M) -> Self {
        Self { inner, meter }
    }
}

impl<T: tokio::io::AsyncRead + Unpin, M: Meter + Unpin> tokio::io::AsyncRead for Metered<T, M> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.meter.passed(0, (buf.filled().len() - before) as u64);
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin, M: Meter + Unpin> tokio::io::AsyncWrite for Metered<T, M> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.meter.passed(*n as u64, 0);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
