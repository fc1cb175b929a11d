//! The client's errors, whose side says whether they are worth retrying.

use std::path::PathBuf;

use wmproxy_tunnel::Side;
use wmproxy_tunnel::stream::StreamError;
use wmproxy_wire::RejectReason;

/// Why the client could not (or can no longer) keep its tunnel.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS setup is wrong (bad CA file, no roots): a config problem.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsSetupError),
    /// A local forward, proxy or the control API could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `server_addr` did not resolve, or the local UDP socket could not be bound.
    #[error("cannot reach the server at {addr}: {source}")]
    Resolve {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The QUIC/TLS handshake failed because of the server's identity (fingerprint or CA
    /// mismatch) or a protocol (ALPN) mismatch. Retrying will not help.
    #[error("TLS handshake refused: {0}")]
    Untrusted(#[source] quinn::ConnectionError),
    /// The TLS handshake of the TCP transport failed because of the server's identity or a
    /// protocol mismatch. Retrying will not help.
    #[error("TLS handshake over TCP refused: {0}")]
    UntrustedTcp(#[source] rustls::Error),
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
    Tunnel(#[from] TunnelError),
    /// The TCP transport could not connect (a TCP connect, or TLS over it, failed); retried.
    #[error("cannot connect to the server at {addr} over TCP: {source}")]
    TcpConnect {
        /// The server's TCP address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Auto mode: QUIC got no answer, and the TCP transport failed too; its side is the TCP
    /// attempt's.
    #[error(
        "no answer from the server at {quic} over QUIC (UDP) in {secs} s, and over TCP: {tcp} \
         (open UDP and TCP to the server, or set proxy_url if only a proxy gets out)"
    )]
    NeitherTransport {
        /// The QUIC address that did not answer.
        quic: std::net::SocketAddr,
        /// How long QUIC was given.
        secs: u64,
        /// Why TCP failed.
        #[source]
        tcp: Box<ClientError>,
    },
    /// The server authenticated us but the rest of the handshake did not finish in time;
    /// retried.
    #[error("connecting to the server timed out")]
    Timeout,
    /// Nothing came back from the server within the connect timeout: it is down, or UDP does
    /// not get through (the tunnel is QUIC, over UDP); retried.
    #[error(
        "no answer from the server at {addr} (UDP) in {secs} s: it may be down, or a firewall may block UDP \
         between here and there; the tunnel is QUIC, which needs UDP port {} open to the server",
        addr.port()
    )]
    NoAnswer {
        /// The server's address.
        addr: std::net::SocketAddr,
        /// How long the client waited.
        secs: u64,
    },
}

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rustls refused the setup.
    #[error("{0}")]
    Rustls(#[source] rustls::Error),
    /// The setup suits no QUIC cipher suite.
    #[error("{0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The CA file could not be read as PEM certificates.
    #[error("CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate of the CA file was refused.
    #[error("CA file {path}: {source}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The CA file holds no certificate.
    #[error("CA file {0}: no certificate in file")]
    EmptyCaFile(PathBuf),
    /// The certificate for direct connections could not be made.
    #[error("making the certificate for direct connections: {0}")]
    Generate(#[source] rcgen::Error),
    /// The system has no usable root certificate.
    #[error("no usable system root certificates ({0} errors)")]
    NoSystemRoots(usize),
}

/// Why a tunnel could not be set up, or ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The connection could not be started (a bad address or server name).
    #[error("cannot start the connection: {0}")]
    Connect(#[source] quinn::ConnectError),
    /// The connection failed or was closed (by the server, with its reason, or by the network).
    #[error("{0}")]
    Connection(#[source] quinn::ConnectionError),
    /// The HTTP/2 layer of the TCP transport failed.
    #[error("HTTP/2 over TLS: {0}")]
    Mux(#[source] wmproxy_tunnel::conn::tcp::MuxError),
    /// The control stream failed.
    #[error("control stream: {0}")]
    Control(#[source] StreamError),
    /// The TLS session offers no keying material for the proof.
    #[error("TLS exporter unavailable")]
    Exporter,
    /// The server answered with a message it should not have.
    #[error("unexpected reply on the control stream")]
    UnexpectedReply,
}

impl ClientError {
    /// Whose fault it is: the tunnel's (the network, the server's load) is retried; anything
    /// that needs the operator (this end's config, the server's identity or its refusal of our
    /// credentials) is internal and ends the client.
    pub fn side(&self) -> Side {
        match self {
            Self::NeitherTransport { tcp, .. } => tcp.side(),
            Self::Tunnel(_)
            | Self::Timeout
            | Self::NoAnswer { .. }
            | Self::Resolve { .. }
            | Self::TcpConnect { .. } => Side::Tunnel,
            Self::Rejected(
                RejectReason::Throttled { .. }
                | RejectReason::ServerFull
                | RejectReason::NameInUse
                | RejectReason::SharedTokenFull { .. },
            ) => Side::Tunnel,
            _ => Side::Internal,
        }
    }

    /// Whether reconnecting could help. Wrong credentials, an untrusted server and a version
    /// mismatch end the client with a clear error instead of retrying for ever.
    pub fn is_retryable(&self) -> bool {
        self.side() == Side::Tunnel
    }
}

impl From<quinn::ConnectionError> for ClientError {
    fn from(e: quinn::ConnectionError) -> Self {
        // QUIC reserves 0x100-0x1ff for TLS alerts (RFC 9000 §20.1): a refused certificate
        // (ours or theirs) or no common ALPN. Retrying will not fix either.
        let tls_alert = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
        match &e {
            quinn::ConnectionError::TransportError(t) if tls_alert(t.code) => Self::Untrusted(e),
            quinn::ConnectionError::ConnectionClosed(c) if tls_alert(c.error_code) => Self::Untrusted(e),
            _ => Self::Tunnel(TunnelError::Connection(e)),
        }
    }
}

impl From<StreamError> for ClientError {
    fn from(e: StreamError) -> Self {
        Self::Tunnel(TunnelError::Control(e))
    }
}

impl From<RejectReason> for ClientError {
    fn from(reason: RejectReason) -> Self {
        match reason {
            RejectReason::VersionMismatch { server, client } => Self::VersionMismatch { server, client },
            other => Self::Rejected(other),
        }
    }
}
