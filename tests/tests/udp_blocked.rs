//! When UDP is blocked (issue 20), on the network test bed:
//! - The NAT in front of the client drops every UDP packet. A client in auto mode falls back to
//!   the TCP transport within 5 s, and a TCP service, a UDP service, a vhost name and its SOCKS5
//!   proxy all work over it (64 MiB checksummed). When UDP gets through again, the client is
//!   back on QUIC within its probe interval, while a transfer in flight on the TCP tunnel
//!   completes intact.
//! - Only TCP to port 443 gets out, and only through an HTTP proxy (tinyproxy, with basic
//!   authentication): the tunnel comes up through `CONNECT` and serves the same.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::tcp_proxy::TcpProxy;
use wmproxy_config::{HttpRoute, ProxyType, Transport};
use wmproxy_tests::netbed::http_proxy::HttpProxy;
use wmproxy_tests::netbed::{self, InNetns, Mapping, PUBLIC};
use wmproxy_tests::proxy::{HyperConnection, connect_request, http_tagged, proxy};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, eventually, http_service, tcp_service, udp};

const BULK: usize = 64 << 20;
const PROBE_SECS: u64 = 2;

/// The transport of the server's one client, as its `/status` says.
async fn transport(public: &InNetns, server: &TestServer) -> Result<String> {
    let api = server.handle.control_addr().context("the control API")?;
    let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    Ok(status["clients"][0]["transport"].as_str().unwrap_or("none").to_owned())
}

/// A server on the bed's public host for these tests (its TCP transport on `tcp_bind`), and
/// a client config with every kind of service of the home host, and a SOCKS5 proxy.
struct Setup {
    server: TestServer,
    config: wmproxy_config::ClientConfig,
    ports: Ports,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The public ports of the services (fixed: they stay when the client moves to another
/// tunnel), and the SOCKS5 target on the public host's loopback.
#[derive(Clone, Copy)]
struct Ports {
    tcp: u16,
    udp: u16,
    sink: u16,
}

async fn setup(public: &InNetns, home: &InNetns, tcp_bind: String) -> Result<Setup> {
    let server = netbed::public_server_with(public, move |f| {
        f.tcp_bind = Some(toml::Spanned::new(0..0, tcp_bind));
        f.vhost.http_bind = Some((PUBLIC, 0).into());
        f.allow_domains = vec!["*.example.com".into()];
        // The SOCKS5 proxy's target is on the public host's loopback.
        f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))];
        // The transfer in flight when the client moves back to QUIC has this long to finish.
        f.limits.drain_grace_secs = 60;
    })
    .await?;
    let (echo, udp_echo, web) =
        (home.run(backend::echo()).await??, home.run(udp::echo()).await??, home.run(http_tagged("web")).await??);
    let (sink, received) = home.run(backend::checksum_sink()).await??;
    let ports = Ports {
        tcp: backend::fixed_port().await?,
        udp: backend::fixed_port().await?,
        sink: backend::fixed_port().await?,
    };
    let mut config = server.client_config("behind-a-firewall");
    config.transport = Transport::Auto;
    config.limits.quic_probe_interval_secs = PROBE_SECS;
    config.services.push(tcp_service("echo", echo, ports.tcp));
    config.services.push(udp::service("udp", udp_echo, ports.udp));
    config.services.push(tcp_service("sink", sink, ports.sink));
    let route = HttpRoute { custom_domains: vec!["web.example.com".into()], ..HttpRoute::default() };
    config.services.push(http_service("web", web, route));
    config.proxies.push(proxy(ProxyType::Socks5, None));
    Ok(Setup { server, config, ports, received })
}

/// Starts the client of `config` on the home host; it must be up on the TCP transport
/// within 5 s.
async fn connects_over_tcp(public: &InNetns, home: &InNetns, setup: &Setup) -> Result<TestClient> {
    let started = Instant::now();
    let mut client = home.run(TestClient::start(setup.config.clone())).await??;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(5), "connected after {took:?}");
    println!("connected over TCP after {took:?}");
    ensure!(transport(public, &setup.server).await? == "tcp", "not on the TCP transport");
    Ok(client)
}

/// A TCP service (64 MiB each way), a UDP service, a vhost name and the client's SOCKS5 proxy
/// (64 MiB each way) all work.
async fn serves_everything(public: &InNetns, home: &InNetns, setup: &Setup, client: &TestClient) -> Result<()> {
    let Ports { tcp, udp: udp_port, .. } = setup.ports;
    public.run(async move { backend::bulk_echo(TcpStream::connect((PUBLIC, tcp)).await?, BULK, 1).await }).await??;
    public
        .run(async move {
            let user = udp::user().await?;
            for i in 0..20u8 {
                let payload = backend::pattern(200, u64::from(i));
                let back = udp::request(&user, SocketAddr::from((PUBLIC, udp_port)), &payload).await?;
                ensure!(back == payload, "datagram {i} came back changed");
            }
            anyhow::Ok(())
        })
        .await??;
    let vhost = setup.server.handle.vhost_addr().context("vhost")?;
    let (status, body) =
        public.run(async move { HyperConnection::connect(vhost).await?.get("web.example.com", "/x").await }).await??;
    ensure!(status == 200 && body.starts_with("web /x "), "vhost: {status} {body}");
    let far_echo = public.run(backend::echo()).await??;
    let socks = *client.forward_addrs.first().context("the proxy")?;
    home.run(async move {
        let mut stream = TcpStream::connect(socks).await?;
        stream.write_all(&connect_request(1, 1, &[127, 0, 0, 1], far_echo.port())).await?;
        // The method choice, then the reply.
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply).await?;
        ensure!(reply[..4] == [5, 0, 5, 0], "SOCKS5 refused: {reply:?}");
        backend::bulk_echo(stream, BULK, 2).await
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_falls_back_to_tcp_and_comes_back_to_quic_without_losing_a_transfer() -> Result<()> {
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    bed.block_udp(true)?;
    let setup = setup(&public, &home, format!("{PUBLIC}:0")).await?;
    let client = connects_over_tcp(&public, &home, &setup).await?;
    serves_everything(&public, &home, &setup, &client).await?;
    let (server, received, sink_port, tcp_port) = (&setup.server, &setup.received, setup.ports.sink, setup.ports.tcp);

    // An upload in flight on the TCP tunnel when UDP comes back: half of it before the move,
    // half after, on the same connection.
    const LEN: usize = 16 << 20;
    let data = backend::pattern(LEN, 3);
    let expected = backend::checksum(&data);
    let (moved, on_quic) = tokio::sync::oneshot::channel::<()>();
    let upload = public.run(async move {
        let mut user = TcpStream::connect((PUBLIC, sink_port)).await?;
        user.write_all(&data[..LEN / 2]).await?;
        on_quic.await?;
        user.write_all(&data[LEN / 2..]).await?;
        user.shutdown().await?;
        let mut answer = [0u8; 16];
        user.read_exact(&mut answer).await?;
        anyhow::Ok(answer)
    });
    eventually("the first half of the upload", || received.load(Ordering::Relaxed) >= (LEN / 2) as u64).await?;
    bed.block_udp(false)?;
    let unblocked = Instant::now();

    // Back on QUIC within the probe interval (and a handshake or two).
    let within = Duration::from_secs(PROBE_SECS) + Duration::from_secs(5);
    loop {
        if transport(&public, server).await? == "quic" {
            break;
        }
        ensure!(unblocked.elapsed() < within, "still not on QUIC {:?} after UDP came back", unblocked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("back on QUIC {:?} after UDP came back (probe interval {PROBE_SECS} s)", unblocked.elapsed());
    let _ = moved.send(());

    // The upload in flight on the TCP tunnel arrived whole.
    let answer = tokio::time::timeout(DEADLINE * 3, upload).await.context("the upload stalled")???;
    let (count, hash) = (u64::from_be_bytes(answer[..8].try_into()?), u64::from_be_bytes(answer[8..].try_into()?));
    ensure!(
        count == LEN as u64 && hash == expected,
        "{count} of {LEN} bytes arrived, checksum match: {}",
        hash == expected
    );

    // New connections ride QUIC, on the same public ports.
    public.echo_through(tcp_port, 1 << 20, 4).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tcp_443_through_an_http_proxy_carries_the_tunnel() -> Result<()> {
    if netbed::http_proxy::skip()? {
        return Ok(());
    }
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    bed.only_tcp_443_through_a_proxy()?;
    let proxy = HttpProxy::start(&bed, (&bed.home(), &home), ("alice", "s3cret-proxy")).await?;
    let mut setup = setup(&public, &home, format!("{PUBLIC}:443")).await?;
    setup.config.servers[0].tcp_addr = format!("{PUBLIC}:443");
    setup.config.tcp_proxy =
        Some(TcpProxy::parse(&format!("http://alice:s3cret-proxy@{}", proxy.addr)).map_err(anyhow::Error::msg)?);
    let client = connects_over_tcp(&public, &home, &setup).await?;
    serves_everything(&public, &home, &setup, &client).await?;
    Ok(())
}
