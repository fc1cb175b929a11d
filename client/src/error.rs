//! The client's errors, and which of them are worth retrying.

use wmproxy_proto::datastream::DataStreamError;
use wmproxy_proto::stream::StreamError;
use wmproxy_proto::wire::RejectReason;

/// Why the client could not (or can no longer) keep its tunnel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS setup is wrong (bad CA file, no roots): a config problem.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A local forward could not listen.
    #[error("cannot listen on {addr} for a forward: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `server_addr` did not resolve, or the local UDP socket could not be bound.
    #[error("cannot reach the server at {addr}: {reason}")]
    Resolve {
        /// The configured address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The QUIC/TLS handshake failed because of the server's identity (fingerprint or CA
    /// mismatch) or a protocol (ALPN) mismatch. Retrying will not help.
    #[error("TLS handshake refused: {0}")]
    Untrusted(String),
    /// The server refused this client.
    #[error("server rejected the client: {0}")]
    Rejected(RejectReason),
    /// The server speaks another protocol version.
    #[error("protocol version mismatch: server speaks version {server}, client speaks version {client}")]
    VersionMismatch {
        /// The server's version.
        server: u32,
        /// Ours.
        client: u32,
    },
    /// The tunnel could not be set up or was lost; retried.
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// The handshake did not finish in time; retried.
    #[error("connecting to the server timed out")]
    Timeout,
}

impl ClientError {
    /// Whether reconnecting could help. Wrong credentials, an untrusted server and a version
    /// mismatch end the client with a clear error instead of retrying forever.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Tunnel(_) | Self::Timeout | Self::Resolve { .. } => true,
            Self::Rejected(r) => {
                matches!(r, RejectReason::Throttled { .. } | RejectReason::ServerFull)
            }
            _ => false,
        }
    }
}

impl From<quinn::ConnectionError> for ClientError {
    fn from(e: quinn::ConnectionError) -> Self {
        // QUIC reserves 0x100-0x1ff for TLS alerts (RFC 9000 §20.1): a refused certificate
        // (ours or theirs) or no common ALPN. Retrying will not fix either.
        let tls_alert = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
        match &e {
            quinn::ConnectionError::TransportError(t) if tls_alert(t.code) => Self::Untrusted(e.to_string()),
            quinn::ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code) => Self::Untrusted(e.to_string()),
            _ => Self::Tunnel(e.to_string()),
        }
    }
}

impl From<StreamError> for ClientError {
    fn from(e: StreamError) -> Self {
        Self::Tunnel(format!("control stream: {e}"))
    }
}

impl From<DataStreamError> for ClientError {
    fn from(e: DataStreamError) -> Self {
        Self::Tunnel(e.to_string())
    }
}
