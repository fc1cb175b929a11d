//! Reaching a server over the TCP transport: a TCP connection to its `tcp_addr` (directly,
//! or through `proxy_url`: see `tcp_proxy`), TLS 1.3 over it with the same trust as QUIC, then HTTP/2 with this end as the offerer (see
//! `wmproxy_tunnel::conn::tcp`). What follows (Hello, Register) is the QUIC path's.

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use wmproxy_config::{ClientConfig, ServerEntry};
use wmproxy_tunnel::Conn;
use wmproxy_tunnel::conn::tcp;
use wmproxy_tunnel::transport::TransportTuning;
use wmproxy_wire::ALPN_TCP;

use crate::error::{ClientError, TunnelError};

/// Connects to the server's TCP transport and sets up the HTTP/2 layer. The caller bounds the
/// time it takes.
pub async fn connect(config: &ClientConfig, dialer: &crate::handshake::Dialer) -> Result<Conn, ClientError> {
    let (server, tls, tracker) = (&dialer.server, &dialer.tcp, &dialer.tracker);
    let addr = &server.tcp_addr;
    let failed = |source| ClientError::TcpConnect { addr: addr.clone(), source };
    match &config.tcp_proxy {
        Some(proxy) => {
            // The server's address as far as this end can tell: the proxy's.
            let (stream, remote) = crate::tcp_proxy::connect(proxy, addr).await.map_err(failed)?;
            secure(stream, remote, (config, server), (tls, tracker)).await
        }
        None => {
            let tcp = TcpStream::connect(addr.as_str()).await.map_err(failed)?;
            let remote = tcp.peer_addr().map_err(failed)?;
            let _ = tcp.set_nodelay(true);
            wmproxy_tunnel::accept::keepalive(&tcp);
            secure(tcp, remote, (config, server), (tls, tracker)).await
        }
    }
}

/// TLS over `io` (a connection to the server's TCP transport, direct or through a proxy), then
/// the HTTP/2 layer.
async fn secure<T>(
    io: T,
    remote: std::net::SocketAddr,
    (config, server): (&ClientConfig, &ServerEntry),
    (tls, tracker): (&Arc<rustls::ClientConfig>, &TaskTracker),
) -> Result<Conn, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = |source| ClientError::TcpConnect { addr: server.tcp_addr.clone(), source };
    let name = rustls_pki_types::ServerName::try_from(server.server_name.clone())
        .map_err(|e| failed(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, io).await.map_err(|e| {
        // A certificate or protocol the client refuses: retrying will not help.
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(refused) => ClientError::UntrustedTcp(refused.clone()),
            None => failed(e),
        }
    })?;
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(ALPN_TCP) {
        return Err(ClientError::UntrustedTcp(rustls::Error::NoApplicationProtocol));
    }
    let secret = tcp::exported_secret(session).map_err(ClientError::UntrustedTcp)?;
    let settings =
        TransportTuning { keep_alive: Some(config.limits.keep_alive()), ..TransportTuning::default() }.tcp_settings();
    let conn = tcp::offerer(tls, (remote, secret), settings, tracker).await.map_err(TunnelError::Mux)?;
    Ok(Conn::from(conn))
}
