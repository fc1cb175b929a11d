//! When UDP is blocked (issue 20), on the network test bed: the NAT in front of the client
//! drops every UDP packet. A client in auto mode falls back to the TCP transport within 5 s,
//! and a TCP service, a UDP service, a vhost name and its SOCKS5 proxy all work over it (64 MiB
//! checksummed). When UDP gets through again, the client is back on QUIC within its probe
//! interval, while a transfer in flight on the TCP tunnel completes intact.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::{HttpRoute, ProxyType, Transport};
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

/// `BULK` bytes through `stream` and back, checksummed.
async fn bulk_echo(stream: TcpStream, seed: u64) -> Result<()> {
    let data = backend::pattern(BULK, seed);
    let expected = backend::checksum(&data);
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut back = Vec::with_capacity(BULK);
    r.read_to_end(&mut back).await?;
    writer.await??;
    ensure!(back.len() == BULK && backend::checksum(&back) == expected, "{} bytes came back changed", back.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_falls_back_to_tcp_and_comes_back_to_quic_without_losing_a_transfer() -> Result<()> {
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    bed.block_udp(true)?;
    let server = netbed::public_server_with(&public, |f| {
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
    // Fixed public ports: the services keep them when the client moves to another tunnel.
    let (tcp_port, udp_port, sink_port) =
        (backend::fixed_port().await?, backend::fixed_port().await?, backend::fixed_port().await?);
    let mut config = server.client_config("behind-a-firewall");
    config.transport = Transport::Auto;
    config.limits.quic_probe_interval_secs = PROBE_SECS;
    config.services.push(tcp_service("echo", echo, tcp_port));
    config.services.push(udp::service("udp", udp_echo, udp_port));
    config.services.push(tcp_service("sink", sink, sink_port));
    let route = HttpRoute { custom_domains: vec!["web.example.com".into()], ..HttpRoute::default() };
    config.services.push(http_service("web", web, route));
    config.proxies.push(proxy(ProxyType::Socks5, None));

    // Falls back to TCP, within 5 s.
    let started = Instant::now();
    let mut client = home.run(TestClient::start(config)).await??;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(5), "connected after {took:?}");
    println!("connected over TCP after {took:?}");
    ensure!(transport(&public, &server).await? == "tcp", "not on the TCP transport");

    // A TCP service, 64 MiB each way, from a user on the public side.
    public.run(async move { bulk_echo(TcpStream::connect((PUBLIC, tcp_port)).await?, 1).await }).await??;
    // A UDP service.
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
    // A vhost name.
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let (status, body) =
        public.run(async move { HyperConnection::connect(vhost).await?.get("web.example.com", "/x").await }).await??;
    ensure!(status == 200 && body.starts_with("web /x "), "vhost: {status} {body}");
    // The client's SOCKS5 proxy, to an echo on the public side: 64 MiB each way.
    let far_echo = public.run(backend::echo()).await??;
    let socks = *client.forward_addrs.first().context("the proxy")?;
    home.run(async move {
        let mut stream = TcpStream::connect(socks).await?;
        stream.write_all(&connect_request(1, 1, &[127, 0, 0, 1], far_echo.port())).await?;
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply).await?;
        ensure!(reply[..4] == [5, 0, 5, 0], "SOCKS5 refused: {reply:?}");
        bulk_echo(stream, 2).await
    })
    .await??;

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
        if transport(&public, &server).await? == "quic" {
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
