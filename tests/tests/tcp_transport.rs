//! The TCP transport (TLS on TCP, HTTP/2 streams): a client that uses it serves everything a
//! QUIC client does: a TCP service (64 MiB both ways, checksummed), a UDP service (datagrams
//! on the link stream), a vhost name and its own SOCKS5 proxy. And auto mode's fallback, on
//! loopback: QUIC to a port nobody answers on.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::{HttpRoute, ProxyType, Transport};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::logs::Logs;
use wmproxy_tests::proxy::{connect_request, curl, http_tagged, proxy};
use wmproxy_tests::{TestClient, TestServer, http_service, tcp_service, udp};

const BULK: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_the_tcp_transport_serves_tcp_udp_vhost_and_its_socks5_proxy() -> Result<()> {
    // The binary's one subscriber is the log capture of the fallback test.
    let _ = Logs::capture();
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.allow_domains = vec!["*.example.com".into()];
        f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))];
    })
    .await?;
    let (echo, udp_echo, web) = (backend::echo().await?, udp::echo().await?, http_tagged("web").await?);
    let mut config = server.client_config("home");
    config.transport = Transport::Tcp;
    config.services.push(tcp_service("echo", echo, 0));
    config.services.push(udp::service("udp", udp_echo, 0));
    let route = HttpRoute { custom_domains: vec!["web.example.com".into()], ..HttpRoute::default() };
    config.services.push(http_service("web", web, route));
    config.proxies.push(proxy(ProxyType::Socks5, None));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;

    // Both ends see the tunnel on the TCP transport.
    ensure!(matches!(*client.status.borrow(), ClientStatus::Connected { transport: "tcp", .. }), "client status");
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    ensure!(status["clients"][0]["transport"] == "tcp", "status: {status}");
    let (_, metrics) = server.control("GET", "/metrics", "").await?;
    let metrics = wmproxy_tests::metrics::parse(&metrics)?;
    let on = |transport| {
        wmproxy_tests::metrics::sample(&metrics, "wmproxy_tunnels_by_transport", &[("transport", transport)])
    };
    ensure!(
        on("tcp") == Some(1.0) && on("quic").unwrap_or(0.0) == 0.0,
        "tunnels by transport: {:?} {:?}",
        on("tcp"),
        on("quic")
    );

    // A TCP service, 64 MiB each way.
    let port = client.port_of("echo").await?;
    backend::bulk_echo(TcpStream::connect(("127.0.0.1", port)).await?, BULK, 1).await.context("tcp service")?;

    // A UDP service: datagrams ride the link stream.
    let port = client.port_of("udp").await?;
    let user = udp::user().await?;
    for i in 0..50u8 {
        let payload = pattern(100 + usize::from(i), u64::from(i));
        let back = udp::request(&user, SocketAddr::from(([127, 0, 0, 1], port)), &payload).await?;
        ensure!(back == payload, "datagram {i} came back changed");
    }

    // A vhost name.
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let got = curl(&["-sS", "-H", "Host: web.example.com", &format!("http://{vhost}/over-tcp")]).await?;
    ensure!(String::from_utf8_lossy(&got).starts_with("web /over-tcp "), "vhost: {got:?}");

    // The client's SOCKS5 proxy: its connections leave from the server, 64 MiB each way.
    let socks = *client.forward_addrs.first().context("the proxy's address")?;
    let mut stream = TcpStream::connect(socks).await?;
    let ip = match echo.ip() {
        std::net::IpAddr::V4(ip) => ip.octets(),
        std::net::IpAddr::V6(_) => anyhow::bail!("the echo backend is on IPv4"),
    };
    stream.write_all(&connect_request(1, 1, &ip, echo.port())).await?;
    // The method choice, then the reply.
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).await?;
    ensure!(reply[..4] == [5, 0, 5, 0], "SOCKS5 refused: {reply:?}");
    backend::bulk_echo(stream, BULK, 2).await.context("socks5 proxy")?;
    Ok(())
}

/// Auto mode where QUIC gets no answer (`server_addr` is a UDP port nobody answers on, as where
/// a firewall drops UDP): the client falls back to TCP once; when that tunnel is lost (the
/// server restarts), it reconnects over TCP at once instead of waiting out QUIC again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_falls_back_once_and_reconnects_over_tcp_at_once() -> Result<()> {
    let logs = Logs::capture();
    let tcp_addr = format!("127.0.0.1:{}", backend::fixed_port().await?);
    let bind = tcp_addr.clone();
    let mut server = TestServer::start(move |f| f.tcp_bind = Some(toml::Spanned::new(0..0, bind))).await?;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let echo = backend::echo().await?;
    let mut config = server.client_config("auto");
    config.transport = Transport::Auto;
    config.servers[0].addr = silent.local_addr()?.to_string();
    config.servers[0].tcp_addr = tcp_addr.clone();
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected over TCP", |s| matches!(s, ClientStatus::Connected { transport: "tcp", .. })).await?;
    let fallbacks = || logs.matching(|e| e.message.contains("trying TLS over TCP") && e.field("tcp") == tcp_addr).len();
    ensure!(fallbacks() == 1, "{} fallbacks", fallbacks());

    server.restart().await?;
    wmproxy_tests::eventually("the client back on the restarted server", || {
        server.handle.clients().iter().any(|c| c == "auto")
    })
    .await?;
    let port = client.port_of("echo").await?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port)), 1024, 7).await?;
    ensure!(fallbacks() == 1, "the reconnect waited out QUIC again ({} fallbacks)", fallbacks());
    Ok(())
}

/// Auto mode where neither transport gets through: the error says both, so that an operator
/// knows to open UDP and TCP (or to set a proxy), and the client keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_says_when_neither_transport_gets_through() -> Result<()> {
    let _ = Logs::capture();
    let server = TestServer::start(|_| {}).await?;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut config = server.client_config("nowhere");
    config.transport = Transport::Auto;
    config.servers[0].addr = silent.local_addr()?.to_string();
    config.servers[0].tcp_addr = backend::dead_port().await?.to_string();
    let mut client = TestClient::start(config).await?;
    let status = client
        .wait_for("the first failed attempt", |s| matches!(s, ClientStatus::Connecting { last_error: Some(_), .. }))
        .await?;
    let ClientStatus::Connecting { last_error: Some(error), .. } = status else { anyhow::bail!("{status:?}") };
    ensure!(
        error.contains("over QUIC (UDP)") && error.contains("and over TCP") && error.contains("refused"),
        "{error}"
    );
    Ok(())
}
