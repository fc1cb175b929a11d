//! The HTTPS port: routes each connection by the SNI of its TLS ClientHello, without
//! terminating TLS, so the certificate and key stay with the private service. The ClientHello
//! is parsed by rustls's `Acceptor` from a copy of the bytes; every byte read is then forwarded
//! first, and the rest relayed.
//!
//! With `[vhost.tls]`, a connection whose SNI no `https` route claims is terminated here
//! instead (the bytes read are replayed to rustls) and served like the vhost port.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::Acceptor;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_config::vhost::normalize_host;
use wmproxy_tunnel::relay::{Limits, Meter, relay_within};
use wmproxy_tunnel::{Ask, Upstream};

use super::serve::{Scheme, Vhost};

/// Largest ClientHello read before giving up.
const MAX_HELLO: usize = 16 * 1024;

/// Accepts users on the HTTPS port until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, vhost: Vhost, shutdown: CancellationToken) {
    let users = vhost.serving.users.clone();
    while let Some((tcp, peer, permit)) = wmproxy_tunnel::accept::next_user(&listener, &shutdown, &users).await {
        let span = info_span!("tls_user", %peer, sni = tracing::field::Empty);
        let served = vhost.clone();
        vhost.serving.runtime.tracker.spawn(
            async move {
                let _permit = permit;
                connection(tcp, peer, served).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(mut tcp: TcpStream, peer: SocketAddr, vhost: Vhost) {
    let timeout = vhost.header_read_timeout;
    if !vhost.serving.silent.first_bytes(&tcp, timeout).await {
        return debug!("no first bytes; closing");
    }
    let (sni, hello) = match tokio::time::timeout(timeout, client_hello(&mut tcp)).await {
        Ok(Ok(read)) => read,
        Ok(Err(why)) => return debug!(why, "not a usable ClientHello; closing"),
        Err(_) => return debug!("no ClientHello in time; closing"),
    };
    if let Some(sni) = &sni {
        tracing::Span::current().record("sni", sni.as_str());
    }
    let route = sni.as_deref().and_then(|sni| vhost.routes.find(&normalize_host(sni), "/", true));
    let Some(route) = route else {
        return match vhost.tls.clone() {
            Some(config) => terminate(tcp, hello, peer, config, vhost).await,
            None => debug!("no service for this name; closing"),
        };
    };
    let mut opened = match route.template.target.open(peer, Ask::Service).await {
        Ok(opened) => opened,
        Err(e) => {
            vhost.serving.metrics.open_failed(e.side());
            return debug!(error = %e, side = %e.side(), "service not reached; closing");
        }
    };
    if opened.send.write_all(&hello).await.is_err() {
        return;
    }
    let (send, recv, served, _hold) = (opened.send, opened.recv, opened.by, opened.hold);
    let counted = vhost.serving.metrics.stream(&served.client, &served.service);
    counted.passed(hello.len() as u64, 0);
    match relay_within(tcp, (send, recv), &Limits { meter: Some(&counted), ..Limits::default() }).await {
        Ok(stats) => {
            debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "TLS connection finished");
        }
        Err(e) => debug!(error = %e, "TLS connection ended"),
    }
}

/// Completes the TLS handshake with the server's own certificate, replaying the `hello` bytes
/// already read, then serves the connection's requests like the vhost port.
async fn terminate(tcp: TcpStream, hello: Vec<u8>, peer: SocketAddr, config: Arc<ServerConfig>, vhost: Vhost) {
    let (read, write) = tcp.into_split();
    let replayed = tokio::io::join(std::io::Cursor::new(hello).chain(read), write);
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(replayed);
    match tokio::time::timeout(vhost.header_read_timeout, handshake).await {
        Ok(Ok(tls)) => super::serve::connection(tls, peer, Scheme::Https, vhost).await,
        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
        Err(_) => debug!("TLS handshake not finished in time; closing"),
    }
}

/// Reads until the ClientHello is complete; returns its SNI and every byte read.
pub(crate) async fn client_hello<R>(tcp: &mut R) -> Result<(Option<String>, Vec<u8>), &'static str>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before the ClientHello");
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > MAX_HELLO {
            return Err("ClientHello too large");
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).map_err(|_| "not TLS")? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted.client_hello().server_name().map(str::to_owned), seen)),
            Ok(None) => continue,
            Err(_) => return Err("not a TLS ClientHello"),
        }
    }
}
