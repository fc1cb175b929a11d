//! The TCP transport through a proxy (`proxy_url`): an HTTP proxy's `CONNECT` (hyper's client,
//! upgraded to the raw tunnel), or a SOCKS5 `CONNECT` (fast-socks5's client). Either gives a
//! byte stream to the server's TCP transport, over which TLS runs as it does directly.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wmproxy_config::tcp_proxy::{TcpProxy, TcpProxyKind};

/// A byte stream through a proxy.
pub trait Tunnelled: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Tunnelled for T {}

/// Connects to `proxy` and asks it for a connection to `target` (`host:port`): the stream, and
/// the proxy's address (the far end as far as this host can tell). The caller bounds the time
/// it takes.
pub async fn connect(proxy: &TcpProxy, target: &str) -> io::Result<(Pin<Box<dyn Tunnelled>>, SocketAddr)> {
    let tcp = TcpStream::connect(proxy.addr.as_str()).await?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr()?;
    let stream = match proxy.kind {
        TcpProxyKind::Http => http_connect(tcp, proxy, target).await?,
        TcpProxyKind::Socks5 => socks5_connect(tcp, proxy, target).await?,
    };
    Ok((stream, peer))
}

async fn http_connect(tcp: TcpStream, proxy: &TcpProxy, target: &str) -> io::Result<Pin<Box<dyn Tunnelled>>> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| io::Error::other(format!("HTTP proxy {}: {what}: {e}", proxy.addr));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| failed("handshake", &e))?;
    let mut request = Request::builder().method(Method::CONNECT).uri(target).header(hyper::header::HOST, target);
    if let Some((user, password)) = &proxy.credentials {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
        request = request.header(hyper::header::PROXY_AUTHORIZATION, format!("Basic {basic}"));
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| failed("request", &e))?;
    // The connection is driven until the upgrade hands its socket over; it completes then (and
    // must not be polled again).
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut handed_over = false;
    let mut answered = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        response = &mut answered => response,
        ended = &mut conn => {
            ended.map_err(|e| failed("connection", &e))?;
            handed_over = true;
            answered.await
        }
    }
    .map_err(|e| failed("CONNECT", &e))?;
    if response.status() != StatusCode::OK {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("HTTP proxy {} refused CONNECT {target}: {}", proxy.addr, response.status()),
        ));
    }
    let mut upgrading = std::pin::pin!(hyper::upgrade::on(response));
    let upgraded = if handed_over {
        upgrading.await
    } else {
        tokio::select! {
            upgraded = &mut upgrading => upgraded,
            ended = &mut conn => {
                ended.map_err(|e| failed("connection", &e))?;
                upgrading.await
            }
        }
    };
    let upgraded = upgraded.map_err(|e| failed("upgrade", &e))?;
    Ok(Box::pin(TokioIo::new(upgraded)))
}

async fn socks5_connect(tcp: TcpStream, proxy: &TcpProxy, target: &str) -> io::Result<Pin<Box<dyn Tunnelled>>> {
    use fast_socks5::client::{Config, Socks5Stream};
    use fast_socks5::util::target_addr::ToTargetAddr;
    let failed = |e: fast_socks5::SocksError| io::Error::other(format!("SOCKS5 proxy {}: {e}", proxy.addr));
    let (host, port) = wmproxy_config::client::split_host_port(target).map_err(io::Error::other)?;
    let auth = proxy.credentials.as_ref().map(|(username, password)| fast_socks5::AuthenticationMethod::Password {
        username: username.clone(),
        password: password.expose().to_owned(),
    });
    let mut stream = Socks5Stream::use_stream(tcp, auth, Config::default()).await.map_err(failed)?;
    let target = (host.trim_matches(['[', ']']), port).to_target_addr().map_err(|e| io::Error::other(e.to_string()))?;
    stream.request(fast_socks5::Socks5Command::TCPConnect, target).await.map_err(failed)?;
    Ok(Box::pin(stream))
}
