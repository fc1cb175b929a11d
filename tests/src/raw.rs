//! A hand-driven QUIC peer: speaks (or breaks) the protocol frame by frame.

use anyhow::{Context, Result};
use quinn::{Connection, Endpoint};
use wmproxy_config::ServerTrust;
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_tunnel::transport;
use wmproxy_wire::{AuthToken, Hello, HelloReply, PROTOCOL_VERSION, ResumeSecret, auth};

use crate::TestServer;

/// A client-side QUIC endpoint on loopback. quinn gives every endpoint a large receive buffer:
/// tests that make many connections should share one.
pub fn endpoint() -> Result<Endpoint> {
    endpoint_at(std::net::Ipv4Addr::LOCALHOST)
}

/// A client-side QUIC endpoint on `ip` (any of 127.0.0.0/8), so a test can be many peers.
pub fn endpoint_at(ip: std::net::Ipv4Addr) -> Result<Endpoint> {
    Ok(transport::endpoint(transport::bind_udp((ip, 0).into())?, None)?)
}

/// A QUIC connection to `server` from `endpoint` (TLS pinned, right ALPN), no Hello sent yet.
pub async fn connect_from(endpoint: &Endpoint, server: &TestServer) -> Result<Connection> {
    let quic = wmproxy_client::tls::quic_client_config(&ServerTrust::Fingerprint(server.fingerprint.0))?;
    Ok(endpoint.connect_with(quic, server.addr, "wmproxy")?.await?)
}

/// A QUIC connection to `server` from a new endpoint, no Hello sent yet.
pub async fn connect(server: &TestServer) -> Result<(Endpoint, Connection)> {
    let endpoint = endpoint()?;
    let conn = connect_from(&endpoint, server).await?;
    Ok((endpoint, conn))
}

/// Connects and authenticates as `name` with `token`; returns the connection and its open
/// control stream (nothing registered yet).
pub async fn authenticated(
    server: &TestServer,
    name: &str,
    token: &str,
) -> Result<(Endpoint, Connection, quinn::SendStream, quinn::RecvStream)> {
    authenticated_with(server, name, token, |_| {}).await
}

/// As [`authenticated`], with the client's transport settings changed by `adjust` (for
/// example, datagrams turned off).
pub async fn authenticated_with(
    server: &TestServer,
    name: &str,
    token: &str,
    adjust: impl FnOnce(&mut quinn::TransportConfig),
) -> Result<(Endpoint, Connection, quinn::SendStream, quinn::RecvStream)> {
    let endpoint = endpoint()?;
    let mut quic = wmproxy_client::tls::quic_client_config(&ServerTrust::Fingerprint(server.fingerprint.0))?;
    let mut transport = transport::TransportTuning::default().to_config();
    adjust(&mut transport);
    quic.transport_config(std::sync::Arc::new(transport));
    let conn = endpoint.connect_with(quic, server.addr, "wmproxy")?.await?;
    match hello(&conn, name, token, None).await? {
        (HelloReply::Welcome { .. }, send, recv) => Ok((endpoint, conn, send, recv)),
        (other, ..) => anyhow::bail!("not welcomed: {other:?}"),
    }
}

/// Sends a Hello as `name` with `token` (and `resume`, if given) on a new control stream of
/// `conn`; returns the server's reply and the stream.
pub async fn hello(
    conn: &Connection,
    name: &str,
    token: &str,
    resume: Option<ResumeSecret>,
) -> Result<(HelloReply, quinn::SendStream, quinn::RecvStream)> {
    let mut exporter = [0u8; auth::EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, auth::EXPORTER_LABEL, auth::exporter_context(name))
        .ok()
        .context("exporter")?;
    hello_with_proof(conn, name, auth::prove(&AuthToken::new(token), &exporter), resume).await
}

/// Sends a Hello as `name` with `proof` as it is (made for this connection or not) on a new
/// control stream of `conn`; returns the server's reply and the stream.
pub async fn hello_with_proof(
    conn: &Connection,
    name: &str,
    proof: auth::Proof,
    resume: Option<ResumeSecret>,
) -> Result<(HelloReply, quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello { protocol_version: PROTOCOL_VERSION, client_name: crate::name(name), proof, resume, servers: 1 };
    write_frame(&mut send, &hello).await?;
    Ok((read_frame::<HelloReply, _>(&mut recv).await?, send, recv))
}
