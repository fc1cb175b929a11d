//! Proxy figures: bulk upload and time to first byte through the client's SOCKS5 and HTTP
//! (CONNECT) proxies, egress at the server, vs the same target directly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_config::ProxyType;
use wmproxy_tests::{TestClient, TestServer};

/// How a connection reaches its target.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Straight to the target.
    Direct,
    /// Through a SOCKS5 proxy at this address.
    Socks5(SocketAddr),
    /// Through an HTTP proxy at this address, with CONNECT.
    HttpConnect(SocketAddr),
}

/// A server whose egress allows loopback and a client with a SOCKS5 and an HTTP proxy.
pub async fn setup() -> Result<(TestServer, TestClient, SocketAddr, SocketAddr)> {
    let server =
        TestServer::start(|f| f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))])
            .await?;
    let mut config = server.client_config("bench-proxy");
    config.proxies.push(wmproxy_tests::proxy::proxy(ProxyType::Socks5, None));
    config.proxies.push(wmproxy_tests::proxy::proxy(ProxyType::Http, None));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let (socks, http) = (client.forward_addrs[0], client.forward_addrs[1]);
    Ok((server, client, socks, http))
}

/// A connection to `target` by way of `via`, ready for payload.
pub async fn connect(via: Via, target: SocketAddr) -> Result<TcpStream> {
    match via {
        Via::Direct => Ok(TcpStream::connect(target).await?),
        Via::Socks5(proxy) => {
            let mut s = TcpStream::connect(proxy).await?;
            let std::net::IpAddr::V4(ip) = target.ip() else { anyhow::bail!("IPv4 targets only") };
            let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
            hello.extend_from_slice(&ip.octets());
            hello.extend_from_slice(&target.port().to_be_bytes());
            s.write_all(&hello).await?;
            let mut reply = [0u8; 12];
            s.read_exact(&mut reply).await?;
            ensure!(reply[..2] == [5, 0] && reply[3] == 0, "SOCKS5 refused: {reply:?}");
            Ok(s)
        }
        Via::HttpConnect(proxy) => {
            let mut s = TcpStream::connect(proxy).await?;
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte).await.context("CONNECT answer")?;
                head.push(byte[0]);
            }
            ensure!(head.starts_with(b"HTTP/1.1 200"), "CONNECT refused: {}", String::from_utf8_lossy(&head));
            Ok(s)
        }
    }
}

/// Uploads `bytes` to the counting sink at `target`; Gbit/s of payload.
pub async fn bulk(via: Via, target: SocketAddr, bytes: usize) -> Result<f64> {
    let started = Instant::now();
    let mut s = connect(via, target).await?;
    crate::backends::upload_to_sink(&mut s, bytes).await?;
    Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// Connect (with the proxy handshake) and a 1-byte echo from `echo`, sequentially; (p50, p99).
pub async fn first_byte(via: Via, echo: SocketAddr, samples: usize) -> Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut s = connect(via, echo).await?;
        s.set_nodelay(true)?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        times.push(started.elapsed());
    }
    Ok(crate::p50_p99(&mut times))
}
