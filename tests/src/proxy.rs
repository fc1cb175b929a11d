//! Proxy test helpers: an HTTP file server that counts its connections, proxy config entries,
//! and a hand-driven SOCKS5 client for malformed input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wmproxy_client::ClientStatus;
use wmproxy_config::{Credentials, Proxy, ProxyType, Secret};

use crate::{TestClient, TestServer};

/// An HTTP/1.1 server that answers every request with `body` (`Connection: close`), and counts
/// the connections it accepted.
pub async fn file_server(body: Vec<u8>) -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let (count, body) = (accepted.clone(), Arc::new(body));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let body = body.clone();
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                if stream.write_all(reply.as_bytes()).await.is_ok() {
                    let _ = stream.write_all(&body).await;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, accepted))
}

/// A proxy entry on a free loopback port.
pub fn proxy(kind: ProxyType, credentials: Option<(&str, &str)>) -> Proxy {
    Proxy {
        kind,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        credentials: credentials.map(|(u, p)| Credentials { username: u.into(), password: Secret::new(p) }),
        handshake_timeout: Duration::from_secs(1),
    }
}

/// Runs `curl` with `args` and returns its stdout (the downloaded body); fails on a non-zero
/// exit, with curl's stderr.
pub async fn curl(args: &[&str]) -> Result<Vec<u8>> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .context("running curl (install it: apt-get install curl)")?;
    anyhow::ensure!(out.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

/// Sends raw bytes to a SOCKS5 proxy and returns everything it answers until it closes (or 2 s
/// pass).
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.write_all(bytes).await?;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut back)).await;
    Ok(back)
}

/// A SOCKS5 CONNECT request (no auth) for `atyp` + `addr` bytes + `port`, with greeting.
pub fn connect_request(cmd: u8, atyp: u8, addr: &[u8], port: u16) -> Vec<u8> {
    let mut out = vec![5, 1, 0, 5, cmd, 0, atyp];
    out.extend_from_slice(addr);
    out.extend_from_slice(&port.to_be_bytes());
    out
}

/// The reply code (REP) of a SOCKS5 reply `VER REP RSV ATYP …`.
pub fn reply_code(reply: &[u8]) -> Option<u8> {
    reply.get(1).copied()
}

/// A server (egress allowing 127.0.0.1/32 when `allow_loopback`, else the default policy) and a
/// connected client with one proxy of `kind`; returns them and the proxy's address.
pub async fn setup(
    kind: ProxyType,
    allow_loopback: bool,
    credentials: Option<(&str, &str)>,
) -> Result<(TestServer, TestClient, SocketAddr)> {
    let server = TestServer::start(|f| {
        if allow_loopback {
            f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))];
        }
    })
    .await?;
    let mut config = server.client_config("home");
    config.proxies.push(proxy(kind, credentials));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let addr = client.forward_addrs.first().copied().context("the proxy's address")?;
    Ok((server, client, addr))
}

/// Opens a SOCKS5 UDP ASSOCIATE (no auth) on `proxy`: the control connection (the association
/// lives as long as it) and the relay's address.
pub async fn udp_associate(proxy: SocketAddr) -> Result<(TcpStream, SocketAddr)> {
    let mut control = TcpStream::connect(proxy).await?;
    control.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
    let mut reply = [0u8; 12];
    control.read_exact(&mut reply).await?;
    anyhow::ensure!(reply[..4] == [5, 0, 5, 0] && reply[5] == 1, "associate refused: {reply:?}");
    let relay =
        SocketAddr::from(([reply[6], reply[7], reply[8], reply[9]], u16::from_be_bytes([reply[10], reply[11]])));
    Ok((control, relay))
}

/// A SOCKS5 UDP datagram (fragment `frag`) for the IPv4 `target`.
pub fn socks_udp(frag: u8, target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 0, frag, 1];
    if let std::net::IpAddr::V4(ip) = target.ip() {
        d.extend_from_slice(&ip.octets());
    }
    d.extend_from_slice(&target.port().to_be_bytes());
    d.extend_from_slice(payload);
    d
}

/// An HTTP/1.1 backend that answers each request (`Connection: close`) with one line:
/// `<tag> <path> host=<Host> xff=<X-Forwarded-For> xfh=<X-Forwarded-Host>`.
pub async fn http_tagged(tag: &str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let tag = tag.to_owned();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tag = tag.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else { return };
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            l.split_once(':')
                                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                let body = format!(
                    "{tag} {path} host={} xff={} xfh={} xfp={}",
                    header("host"),
                    header("x-forwarded-for"),
                    header("x-forwarded-host"),
                    header("x-forwarded-proto")
                );
                let reply =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sends one HTTP/1.1 request on `stream` (keep-alive) and reads one response with a
/// `content-length`; returns the status code and body.
pub async fn keep_alive_request<S>(stream: &mut S, host: &str, path: &str) -> Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.context("response head")?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .context("content-length")?
        .parse()?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// Reads an HTTP request head (up to 16 KiB, through the blank line); `None` if the peer
/// leaves first.
pub async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// A WebSocket echo backend (tokio-tungstenite): every text or binary message comes back;
/// pings are answered by the library; a close is returned.
pub async fn websocket_echo() -> Result<SocketAddr> {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A keep-alive HTTP/1.1 connection driven by hyper's client, for requests to the vhost.
pub struct HyperConnection(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>);

impl std::fmt::Debug for HyperConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HyperConnection")
    }
}

impl HyperConnection {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Self(sender))
    }

    /// `GET path` with `Host: host` on this connection; the status and the body.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, String)> {
        use http_body_util::BodyExt;
        self.0.ready().await?;
        let request = hyper::Request::get(path).header(hyper::header::HOST, host).body(http_body_util::Empty::new())?;
        let response = self.0.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
