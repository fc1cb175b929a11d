//! One tunnel attempt: resolve, QUIC handshake, Hello with the proof, Register. Returns the live
//! connection with the per-service results. `specs` is what a (re)registration asks for.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use wmproxy_config::{ClientConfig, Service, ServiceType};
use wmproxy_proto::stream::{read_frame, write_frame};
use wmproxy_proto::transport;
use wmproxy_proto::wire::{
    AuthToken, BasicAuth, ControlReply, ControlRequest, GroupKey, GroupMembership, HealthSpec, Hello, HelloReply,
    HttpSpec, RejectReason, ServiceKind, ServiceResult, ServiceSpec, auth,
};

use crate::error::ClientError;

/// Time for the QUIC handshake, Hello and registration together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An established, registered tunnel.
#[derive(Debug)]
pub struct Session {
    /// The endpoint the connection lives on (one per attempt: a fresh source port after a
    /// network change).
    pub endpoint: Endpoint,
    /// The tunnel.
    pub conn: Connection,
    /// One result per configured service, in order.
    pub services: Vec<ServiceResult>,
    /// Kept open for the life of the session; closing it tells the server we left.
    pub control: (quinn::SendStream, quinn::RecvStream),
}

/// Connects, authenticates and registers, within [`HANDSHAKE_TIMEOUT`].
pub async fn establish(
    config: &ClientConfig,
    services: &[Service],
    quic: &quinn::ClientConfig,
    hello_version: u32,
) -> Result<Session, ClientError> {
    let addr = resolve(&config.server_addr).await?;
    let unspecified = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let resolve_err = |reason: String| ClientError::Resolve { addr: config.server_addr.clone(), reason };
    let socket = transport::bind_udp(unspecified).map_err(|e| resolve_err(e.to_string()))?;
    let endpoint = transport::endpoint(socket, None).map_err(|e| resolve_err(e.to_string()))?;

    let attempt = async {
        let connecting = endpoint
            .connect_with(quic.clone(), addr, &config.server_name)
            .map_err(|e| ClientError::Tunnel(e.to_string()))?;
        let conn = connecting.await?;
        let (services, control) = handshake(&conn, config, services, hello_version).await?;
        Ok::<_, ClientError>((conn, services, control))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok((conn, services, control))) => Ok(Session { endpoint, conn, services, control }),
        Ok(Err(e)) => {
            endpoint.close(0u32.into(), b"handshake failed");
            Err(e)
        }
        Err(_) => {
            endpoint.close(0u32.into(), b"handshake timed out");
            Err(ClientError::Timeout)
        }
    }
}

async fn resolve(server_addr: &str) -> Result<SocketAddr, ClientError> {
    let err = |reason: String| ClientError::Resolve { addr: server_addr.to_owned(), reason };
    let mut addrs = tokio::net::lookup_host(server_addr).await.map_err(|e| err(e.to_string()))?;
    addrs.next().ok_or_else(|| err("no address found".into()))
}

async fn handshake(
    conn: &Connection,
    config: &ClientConfig,
    services: &[Service],
    hello_version: u32,
) -> Result<(Vec<ServiceResult>, (quinn::SendStream, quinn::RecvStream)), ClientError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(&config.name))
        .map_err(|_| ClientError::Tunnel("TLS exporter unavailable".into()))?;
    let proof = auth::prove(&AuthToken::new(config.token.expose()), &exporter);
    let hello = Hello { protocol_version: hello_version, client_name: config.name.clone(), proof };
    write_frame(&mut send, &hello).await?;

    match read_frame::<HelloReply, _>(&mut recv).await? {
        HelloReply::Welcome { protocol_version } if protocol_version == hello_version => {}
        HelloReply::Welcome { protocol_version } => {
            return Err(ClientError::VersionMismatch { server: protocol_version, client: hello_version });
        }
        HelloReply::Reject(RejectReason::VersionMismatch { server, client }) => {
            return Err(ClientError::VersionMismatch { server, client });
        }
        HelloReply::Reject(reason) => return Err(ClientError::Rejected(reason)),
        _ => return Err(ClientError::Tunnel("unknown reply to Hello".into())),
    }

    write_frame(&mut send, &ControlRequest::Register { services: specs(services) }).await?;
    let results = match read_frame::<ControlReply, _>(&mut recv).await? {
        ControlReply::Registered { results } => results,
        _ => return Err(ClientError::Tunnel("unknown reply to Register".into())),
    };
    Ok((results, (send, recv)))
}

/// What the server is asked to publish for `services`.
pub(crate) fn specs(services: &[Service]) -> Vec<ServiceSpec> {
    services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            kind: match s.kind {
                ServiceType::Tcp => ServiceKind::Tcp,
                ServiceType::Udp => ServiceKind::Udp,
                ServiceType::Http => ServiceKind::Http,
                ServiceType::Https => ServiceKind::Https,
                ServiceType::Ws => ServiceKind::Ws,
            },
            remote_port: s.remote_port,
            http: s.http.as_ref().map(|h| HttpSpec {
                custom_domains: h.custom_domains.clone(),
                subdomain: h.subdomain.clone(),
                locations: h.locations.clone(),
                host_header_rewrite: h.host_header_rewrite.clone(),
                basic_auth: h
                    .basic_auth
                    .as_ref()
                    .map(|(user, password)| BasicAuth { user: user.clone(), password: password.expose().to_owned() }),
            }),
            group: s.group.as_ref().map(|g| GroupMembership {
                group: g.group.clone(),
                key: GroupKey(g.key.expose().to_owned()),
                weight: g.weight,
                drain: g.drain,
                health: g.health_check.as_ref().map(|h| HealthSpec {
                    rise: h.rise,
                    fall: h.fall,
                    start_healthy: h.start_healthy,
                }),
            }),
        })
        .collect()
}
