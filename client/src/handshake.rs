//! One tunnel attempt: resolve, the transport's handshake (QUIC, or TLS on TCP), Hello with the
//! proof, Register. Returns the
//! live connection with the per-service results.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::info;

use quinn::Endpoint;
use wmproxy_config::{ClientConfig, ServerEntry, Service, Transport};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_tunnel::{Conn, RecvStream, SendStream, transport};
use wmproxy_wire::{
    AuthToken, ControlReply, ControlRequest, Hello, HelloReply, ResumeSecret, ServiceResult, ServiceSpec, TunnelLimits,
    auth, hello,
};

use crate::error::{ClientError, TunnelError};

/// Time for the QUIC handshake, Hello and registration together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Over QUIC, auto mode waits this long for the server's answer before it tries the TCP
/// transport: a QUIC handshake takes one round trip, so a few seconds is UDP being dropped.
pub const QUIC_ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// An established, registered tunnel (the server's side of it is its `Session`).
#[derive(Debug)]
pub struct Established {
    /// The server's address (`addr` of its entry).
    pub server: String,
    /// The QUIC endpoint the connection lives on (one per attempt: a fresh source port after a
    /// network change); `None` over the TCP transport.
    pub endpoint: Option<Endpoint>,
    /// The tunnel.
    pub conn: Conn,
    /// One result per configured service, in order.
    pub services: Vec<ServiceResult>,
    /// Kept open for the life of the tunnel; closing it tells the server we left.
    pub control: (SendStream, RecvStream),
    /// What the next attempt shows the server, so that it replaces this session at once.
    pub resume: ResumeSecret,
    /// The server's per-client limits, which this end follows.
    pub limits: TunnelLimits,
}

/// How the client reaches one server: the server's entry, its TLS setups for both transports
/// (the entry's trust), and the tracker the TCP transport's tasks run on.
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The server.
    pub server: ServerEntry,
    /// QUIC's.
    pub quic: quinn::ClientConfig,
    /// The TCP transport's.
    pub tcp: Arc<rustls::ClientConfig>,
    /// Where the TCP transport's connection tasks run.
    pub tracker: TaskTracker,
}

/// Connects over `transport`, authenticates and registers `services`, within
/// [`HANDSHAKE_TIMEOUT`] (per transport tried). `resume` is the secret of this process's
/// previous session, if it had one. In auto mode, a QUIC handshake that gets no answer within
/// [`QUIC_ANSWER_WITHIN`] is followed by the TCP transport.
pub async fn establish(
    config: &ClientConfig,
    services: &[Service],
    (dialer, transport): (&Dialer, Transport),
    hello: (u32, Option<ResumeSecret>),
) -> Result<Established, ClientError> {
    match transport {
        Transport::Quic => establish_quic(config, services, (dialer, HANDSHAKE_TIMEOUT), hello).await,
        Transport::Tcp => establish_tcp(config, services, dialer, hello).await,
        Transport::Auto => match establish_quic(config, services, (dialer, QUIC_ANSWER_WITHIN), hello).await {
            Err(ClientError::NoAnswer { addr, secs }) => {
                info!(%addr, secs, tcp = %dialer.server.tcp_addr, "no QUIC answer (UDP may be blocked); trying TLS over TCP");
                establish_tcp(config, services, dialer, hello).await.map_err(|tcp| ClientError::NeitherTransport {
                    quic: addr,
                    secs,
                    tcp: Box::new(tcp),
                })
            }
            other => other,
        },
    }
}

/// [`establish`] over the TCP transport.
async fn establish_tcp(
    config: &ClientConfig,
    services: &[Service],
    dialer: &Dialer,
    hello: (u32, Option<ResumeSecret>),
) -> Result<Established, ClientError> {
    let attempt = async {
        let conn = crate::tcp_transport::connect(config, dialer).await?;
        let handshaken = handshake(&conn, (config, &dialer.server), services, hello).await;
        if handshaken.is_err() {
            conn.close(0u32.into(), b"handshake failed");
        }
        Ok::<_, ClientError>((conn, handshaken?))
    };
    let (conn, Handshaken { services, control, resume, limits }) =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.map_err(|_| ClientError::Timeout)??;
    Ok(Established { server: dialer.server.addr.clone(), endpoint: None, conn, services, control, resume, limits })
}

/// [`establish`] over QUIC, counting a server that does not answer within `answer_within` as
/// no answer.
async fn establish_quic(
    config: &ClientConfig,
    services: &[Service],
    (dialer, answer_within): (&Dialer, Duration),
    (hello_version, resume): (u32, Option<ResumeSecret>),
) -> Result<Established, ClientError> {
    let server = &dialer.server;
    let (addr, endpoint) = quic_endpoint(&server.addr).await?;

    // Whether the server answered at all: a QUIC handshake that never completes is what a
    // firewall dropping UDP (or a server that is down) looks like.
    let mut answered = false;
    let attempt = async {
        let connecting =
            endpoint.connect_with(dialer.quic.clone(), addr, &server.server_name).map_err(TunnelError::Connect)?;
        let conn = match tokio::time::timeout(answer_within, connecting).await {
            Ok(conn) => Conn::from(conn?),
            Err(_) => return Err(ClientError::NoAnswer { addr, secs: answer_within.as_secs() }),
        };
        answered = true;
        let hello = (hello_version, resume);
        let handshaken = handshake(&conn, (config, server), services, hello).await?;
        Ok::<_, ClientError>((conn, handshaken))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok((conn, Handshaken { services, control, resume, limits }))) => {
            let server = server.addr.clone();
            Ok(Established { server, endpoint: Some(endpoint), conn, services, control, resume, limits })
        }
        Ok(Err(e)) => {
            endpoint.close(0u32.into(), b"handshake failed");
            Err(e)
        }
        Err(_) if !answered => {
            endpoint.close(0u32.into(), b"no answer");
            Err(ClientError::NoAnswer { addr, secs: HANDSHAKE_TIMEOUT.as_secs() })
        }
        Err(_) => {
            endpoint.close(0u32.into(), b"handshake timed out");
            Err(ClientError::Timeout)
        }
    }
}

/// `server_addr` resolved, and a fresh QUIC endpoint of the matching family to reach it from
/// (one per attempt: a fresh source port after a network change).
pub(crate) async fn quic_endpoint(server_addr: &str) -> Result<(SocketAddr, Endpoint), ClientError> {
    let addr = resolve(server_addr).await?;
    let unspecified = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let resolve_err = |source| ClientError::Resolve { addr: server_addr.to_owned(), source };
    let socket = transport::bind_udp(unspecified).map_err(resolve_err)?;
    let endpoint = transport::endpoint(socket, None).map_err(resolve_err)?;
    Ok((addr, endpoint))
}

async fn resolve(server_addr: &str) -> Result<SocketAddr, ClientError> {
    let err = |source| ClientError::Resolve { addr: server_addr.to_owned(), source };
    let mut addrs = tokio::net::lookup_host(server_addr).await.map_err(err)?;
    addrs.next().ok_or_else(|| err(std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")))
}

/// What a finished handshake gives.
struct Handshaken {
    services: Vec<ServiceResult>,
    control: (SendStream, RecvStream),
    resume: ResumeSecret,
    limits: TunnelLimits,
}

async fn handshake(
    conn: &Conn,
    (config, server): (&ClientConfig, &ServerEntry),
    services: &[Service],
    (hello_version, resume): (u32, Option<ResumeSecret>),
) -> Result<Handshaken, ClientError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(&config.name))
        .map_err(|_| TunnelError::Exporter)?;
    let proof = auth::prove(&AuthToken::new(server.token.expose()), &exporter);
    let servers = match config.mode {
        wmproxy_config::ServersMode::All => u32::try_from(config.servers.len()).unwrap_or(u32::MAX),
        wmproxy_config::ServersMode::Failover => 1,
    };
    let hello = Hello { protocol_version: hello_version, client_name: config.name.clone(), proof, resume, servers };
    write_frame(&mut send, &hello).await?;
    let (resume, announced) = hello::read_reply(read_frame::<HelloReply, _>(&mut recv).await?, hello_version)?;
    let limits = transport::bounded(announced);
    // Before the registration, so the credit is on its way before any user of a service is.
    transport::allow_server_streams(conn, &limits);

    write_frame(&mut send, &ControlRequest::Register { services: specs(services, &config.name) }).await?;
    let ControlReply::Registered { results } = read_frame::<ControlReply, _>(&mut recv).await? else {
        return Err(TunnelError::UnexpectedReply.into());
    };
    Ok(Handshaken { services: results, control: (send, recv), resume, limits })
}

/// What the server is asked to publish for `services` of `client`.
pub(crate) fn specs(services: &[Service], client: &str) -> Vec<ServiceSpec> {
    services.iter().map(|s| s.spec(client)).collect()
}
