//! [`Conn`]: one tunnel's connection, whichever transport carries it. Everything above this
//! module (data streams, relays, UDP flows, probes, the handshakes' later steps) opens, accepts
//! and closes streams through it, and so does not know which transport it runs on: QUIC, or
//! the TCP transport ([`tcp`]) where UDP is blocked.
//!
//! Errors keep quinn's vocabulary ([`quinn::ConnectionError`], [`quinn::ReadError`],
//! [`quinn::WriteError`]): it already names every way a multiplexed connection and its streams
//! end (closed by the peer with a code, reset, timed out), and QUIC is the transport every
//! other one is measured against.

mod stream;
pub mod tcp;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, SendDatagramError, VarInt};

pub use stream::{ClosedStream, READY_CHUNKS, RecvStream, SendStream};

/// The TLS session could not export keying material.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the TLS session exports no keying material")]
pub struct ExportError;

/// Which transport a tunnel runs on, as status and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP: the fast path.
    Quic,
    /// TLS 1.3 on TCP, HTTP/2 streams inside ([`tcp`]): where UDP is blocked.
    Tcp,
}

impl TransportKind {
    /// The name status and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tunnel's connection. Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub enum Conn {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A connection of the TCP transport.
    Tcp(tcp::TcpConn),
}

impl From<tcp::TcpConn> for Conn {
    fn from(conn: tcp::TcpConn) -> Self {
        Self::Tcp(conn)
    }
}

impl From<quinn::Connection> for Conn {
    fn from(conn: quinn::Connection) -> Self {
        Self::Quic(conn)
    }
}

impl Conn {
    /// The transport this connection runs on.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::Tcp(_) => TransportKind::Tcp,
        }
    }

    /// Opens a bidirectional stream (waiting for the peer's credit if need be).
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match self {
            Self::Quic(conn) => {
                let (send, recv) = conn.open_bi().await?;
                Ok((send.into(), recv.into()))
            }
            Self::Tcp(conn) => {
                let (send, recv) = conn.open_bi().await?;
                Ok((send.into(), recv.into()))
            }
        }
    }

    /// The next bidirectional stream the peer opens.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), ConnectionError> {
        match self {
            Self::Quic(conn) => {
                let (send, recv) = conn.accept_bi().await?;
                Ok((send.into(), recv.into()))
            }
            Self::Tcp(conn) => {
                let (send, recv) = conn.accept_bi().await?;
                Ok((send.into(), recv.into()))
            }
        }
    }

    /// Sends a datagram, or drops it if the transport's queue is full.
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), SendDatagramError> {
        match self {
            Self::Quic(conn) => conn.send_datagram(datagram),
            Self::Tcp(conn) => conn.send_datagram(datagram),
        }
    }

    /// The next datagram from the peer.
    pub async fn read_datagram(&self) -> Result<Bytes, ConnectionError> {
        match self {
            Self::Quic(conn) => conn.read_datagram().await,
            Self::Tcp(conn) => conn.read_datagram().await,
        }
    }

    /// The largest datagram the peer accepts now, or `None` if it accepts none.
    pub fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Self::Quic(conn) => conn.max_datagram_size(),
            Self::Tcp(_) => Some(wmproxy_wire::link::MAX_LINK_DATAGRAM),
        }
    }

    /// Closes the connection with `code` and `reason`; the peer sees both.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        match self {
            Self::Quic(conn) => conn.close(code, reason),
            Self::Tcp(conn) => conn.close(u32::try_from(code.into_inner()).unwrap_or(u32::MAX), reason),
        }
    }

    /// Why the connection ended, or `None` while it is up.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        match self {
            Self::Quic(conn) => conn.close_reason(),
            Self::Tcp(conn) => conn.close_reason(),
        }
    }

    /// Completes when the connection ends, with why.
    pub async fn closed(&self) -> ConnectionError {
        match self {
            Self::Quic(conn) => conn.closed().await,
            Self::Tcp(conn) => conn.closed().await,
        }
    }

    /// The peer's address (an IPv4 peer of a dual-stack socket as IPv4: see
    /// [`crate::users::canonical`]).
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Self::Quic(conn) => crate::users::canonical(conn.remote_address()),
            Self::Tcp(conn) => conn.remote_address(),
        }
    }

    /// The current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        match self {
            Self::Quic(conn) => conn.rtt(),
            Self::Tcp(conn) => conn.rtt(),
        }
    }

    /// The path's current maximum packet size, where the transport knows one.
    pub fn mtu(&self) -> Option<u16> {
        match self {
            Self::Quic(conn) => Some(conn.stats().path.current_mtu),
            Self::Tcp(_) => None,
        }
    }

    /// Fills `out` with keying material exported from the connection's TLS session under
    /// `label` and `context` (RFC 5705): what a client's proof of its token is bound to.
    pub fn export_keying_material(&self, out: &mut [u8], label: &[u8], context: &[u8]) -> Result<(), ExportError> {
        match self {
            Self::Quic(conn) => conn.export_keying_material(out, label, context).map_err(|_| ExportError),
            Self::Tcp(conn) => conn.export_keying_material(out, label, context),
        }
    }

    /// The QUIC connection, if this is one (transport tuning and statistics).
    pub fn quic(&self) -> Option<&quinn::Connection> {
        match self {
            Self::Quic(conn) => Some(conn),
            Self::Tcp(_) => None,
        }
    }
}
