//! The tunnel on the network test bed (issue 14): what NATs do to it. Each test builds its own
//! bed and skips, saying why, where one cannot be built (see `netbed.rs`).
//!
//! - NAT rebinding: the NAT forgets the client's mapping in the middle of a transfer and gives
//!   it a new port; the tunnel migrates to it without reconnecting, and the transfer arrives
//!   intact.
//! - NAT idle timeout: an idle tunnel outlives a 30 s UDP mapping timeout for two minutes.
//! - Outage: a blackholed path; the server frees the silent client, which comes back when the
//!   path does.
//! - MTU: a 1280-byte path carries TCP and 1,200-byte UDP packets; on a 1500-byte path QUIC
//!   finds a larger MTU (the server's `/status` shows it).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::netbed::{self, InNetns, Mapping, Netbed};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, eventually, tcp_service};

/// The server's view of the one client: its address.
async fn client_address(public: &InNetns, server: TestServer) -> Result<(TestServer, String)> {
    let (server, status) = client_status(public, server).await?;
    let address = status["address"].as_str().context("one client")?.to_owned();
    Ok((server, address))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_rebinding_mid_transfer_migrates_the_tunnel_and_loses_nothing() -> Result<()> {
    if let Some(why) = Netbed::unavailable() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    const LEN: usize = 64 << 20;
    let bed = Netbed::start(Mapping::Random)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    let server = netbed::public_server(&public).await?;
    let (sink, received) = home.handle().spawn(backend::checksum_sink()).await??;
    let mut config = server.client_config("rebinding");
    config.services.push(tcp_service("sink", sink, 0));
    let mut client = home.handle().spawn(TestClient::start(config)).await??;
    let port = client.port_of("sink").await?;
    let (server, before) = client_address(&public, server).await?;

    let data = backend::pattern(LEN, 11);
    let expected = backend::checksum(&data);
    let upload = public.handle().spawn(async move {
        let mut user = TcpStream::connect((netbed::PUBLIC, port)).await?;
        user.write_all(&data).await?;
        user.shutdown().await?;
        let mut answer = [0u8; 16];
        tokio::time::timeout(DEADLINE, user.read_exact(&mut answer)).await??;
        anyhow::Ok(answer)
    });
    // A quarter in, the NAT forgets every mapping: the client's next packet gets a new port.
    eventually("a quarter of the upload", || received.load(Ordering::Relaxed) >= (LEN / 4) as u64).await?;
    bed.flush_mappings()?;
    let answer = tokio::time::timeout(DEADLINE * 3, upload).await.context("the upload stalled")???;
    let (count, hash) = (u64::from_be_bytes(answer[..8].try_into()?), u64::from_be_bytes(answer[8..].try_into()?));
    ensure!(
        count == LEN as u64 && hash == expected,
        "{count} of {LEN} bytes arrived, checksum match: {}",
        hash == expected
    );

    // The same tunnel, now at another port of the NAT: migrated, not reconnected.
    let (mut server, after) = client_address(&public, server).await?;
    ensure!(after != before && after.starts_with(&format!("{}:", netbed::NAT_WAN)), "{before} -> {after}");
    let tunnels = public.handle().spawn(async move {
        let metrics = scrape(&server).await;
        (server, metrics)
    });
    let (returned, metrics) = tunnels.await?;
    server = returned;
    ensure!(sample(&metrics?, "wmproxy_tunnels_accepted_total", &[]) == Some(1.0), "the client reconnected");
    ensure!(matches!(*client.status.borrow(), wmproxy_client::ClientStatus::Connected { .. }));

    client.stop().await?;
    server.stop().await?;
    drop((public, home));
    Ok(())
}

/// The server's `/status` of the one client, asked from the public host.
async fn client_status(public: &InNetns, server: TestServer) -> Result<(TestServer, serde_json::Value)> {
    let asked = public.handle().spawn(async move {
        let status = server.control("GET", "/status", "").await;
        (server, status)
    });
    let (server, status) = asked.await?;
    let status: serde_json::Value = serde_json::from_str(&status?.1)?;
    Ok((server, status["clients"][0].clone()))
}

/// A server on the public host, and a client behind the NAT publishing a TCP and a UDP echo
/// of the home host; returns them and the two public ports.
async fn echoes(public: &InNetns, home: &InNetns) -> Result<(TestServer, TestClient, u16, u16)> {
    let server = netbed::public_server(public).await?;
    let tcp_echo = home.handle().spawn(backend::echo()).await??;
    let udp_echo = home.handle().spawn(wmproxy_tests::udp::echo()).await??;
    let mut config = server.client_config("mtu");
    config.services.push(tcp_service("tcp", tcp_echo, 0));
    config.services.push(wmproxy_tests::udp::service("udp", udp_echo, 0));
    let mut client = home.handle().spawn(TestClient::start(config)).await??;
    let (tcp, udp) = (client.port_of("tcp").await?, client.port_of("udp").await?);
    Ok((server, client, tcp, udp))
}

/// Over a path with a 1280-byte MTU the tunnel works, TCP and UDP, and a UDP service's
/// 1,200-byte packets still pass (as datagrams where they fit, else on the flow's stream);
/// over a 1500-byte path QUIC finds a larger MTU than its 1200-byte start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1280_byte_path_carries_everything_and_a_1500_byte_path_is_discovered() -> Result<()> {
    if let Some(why) = Netbed::unavailable() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    for (mtu, found) in [(1280u32, 1200..=1252u64), (1500, 1253..=1472)] {
        let bed = Netbed::start(Mapping::PortPreserving)?;
        bed.set_mtu(mtu)?;
        let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
        let (server, mut client, tcp, udp) = echoes(&public, &home).await?;
        let traffic = public.handle().spawn(async move {
            let message = backend::pattern(1 << 20, 3);
            ensure!(backend::round_trip((netbed::PUBLIC, tcp).into(), &message).await? == message, "TCP echo");
            let user = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
            for i in 0..50u8 {
                let payload = vec![i; 1200];
                let to = (netbed::PUBLIC, udp).into();
                wmproxy_tests::udp::round_trip(&user, to, &payload, |_| Ok(())).await?;
            }
            anyhow::Ok(())
        });
        traffic.await??;
        // Path MTU discovery probes on its own schedule: wait (polling) for it to settle.
        let (mut server, mut status) = client_status(&public, server).await?;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !status["mtu"].as_u64().is_some_and(|m| found.contains(&m)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (server, status) = client_status(&public, server).await?;
        }
        ensure!(
            status["mtu"].as_u64().is_some_and(|m| found.contains(&m)),
            "path MTU {mtu}: the tunnel found {}",
            status["mtu"]
        );
        client.stop().await?;
        let mut server = server;
        server.stop().await?;
        drop((public, home, bed));
    }
    Ok(())
}

/// The path goes dark: the server gives the silent tunnel up within its idle timeout (30 s,
/// counted from its last ack-eliciting packet, so up to one keep-alive period, 10 s, more) and
/// frees the client's port; once the path is back the client reconnects within one attempt and
/// one backoff step, and the server holds exactly one session of it, no zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_server_frees_the_client_and_the_client_comes_back() -> Result<()> {
    if let Some(why) = Netbed::unavailable() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    let bed = Netbed::start(Mapping::PortPreserving)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    let (server, mut client, tcp, _) = echoes(&public, &home).await?;
    let dark = tokio::time::Instant::now();
    bed.set_loss(1000)?;

    // The server: no client within its idle timeout (30 s), and the public port closed.
    let mut server = server;
    let gone = loop {
        let asked = public.handle().spawn(async move {
            let status = server.control("GET", "/status", "").await;
            (server, status)
        });
        let (returned, status) = asked.await?;
        server = returned;
        let status: serde_json::Value = serde_json::from_str(&status?.1)?;
        if status["clients"].as_array().is_some_and(Vec::is_empty) {
            break dark.elapsed();
        }
        ensure!(dark.elapsed() < Duration::from_secs(50), "the server still holds the dark client");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let limit = wmproxy_tunnel::transport::IDLE_TIMEOUT + wmproxy_tunnel::transport::KEEP_ALIVE;
    ensure!(gone <= limit + Duration::from_secs(2), "the server took {gone:?} to give the tunnel up");
    let refused = public.handle().spawn(async move { backend::refused(tcp).await });
    refused.await??;

    // The path comes back: connected again within an attempt and a backoff step.
    bed.set_loss(0)?;
    let back = tokio::time::Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_for("connected again", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })),
    );
    connected.await.context("the client did not come back within 30 s of the path")??;
    let returned_in = back.elapsed();

    let (mut server, status) = client_status(&public, server).await?;
    ensure!(status["name"] == "mtu", "{status}");
    let active = public.handle().spawn(async move {
        let metrics = scrape(&server).await;
        (server, metrics)
    });
    let (returned, metrics) = active.await?;
    server = returned;
    ensure!(sample(&metrics?, "wmproxy_tunnels_active", &[]) == Some(1.0), "one session, no zombie");
    println!("server gave up after {gone:?}; client back {returned_in:?} after the path");
    client.stop().await?;
    server.stop().await?;
    drop((public, home));
    Ok(())
}

/// A NAT that forgets idle UDP mappings after 30 s does not cut an idle tunnel: after two
/// minutes of silence the public side still reaches the home service through the same tunnel
/// (keep-alives every 10 s hold the mapping). Prints what the keep-alives cost on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_outlives_a_30_s_nat_mapping_timeout() -> Result<()> {
    if let Some(why) = Netbed::unavailable() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    const IDLE: Duration = Duration::from_secs(120);
    let bed = Netbed::start(Mapping::Random)?;
    bed.set_udp_timeout(30)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    let (server, mut client, tcp, _) = echoes(&public, &home).await?;
    let (server, before) = client_address(&public, server).await?;

    // Two minutes with no traffic but the tunnel's own: the idle period is the scenario.
    let (packets_0, bytes_0) = bed.forwarded()?;
    tokio::time::sleep(IDLE).await;
    let (packets_1, bytes_1) = bed.forwarded()?;
    let minutes = IDLE.as_secs_f64() / 60.0;
    println!(
        "idle tunnel through the NAT: {:.0} packets and {:.0} bytes per minute, both ways",
        (packets_1 - packets_0) as f64 / minutes,
        (bytes_1 - bytes_0) as f64 / minutes
    );

    let message = backend::pattern(64 * 1024, 9);
    let sent = message.clone();
    let echoed = public.handle().spawn(async move { backend::round_trip((netbed::PUBLIC, tcp).into(), &sent).await });
    ensure!(echoed.await?? == message, "the idle tunnel no longer carries");
    let (mut server, after) = client_address(&public, server).await?;
    ensure!(after == before, "the mapping changed ({before} -> {after}): the NAT forgot it while idle");
    let accepted = public.handle().spawn(async move {
        let metrics = scrape(&server).await;
        (server, metrics)
    });
    let (returned, metrics) = accepted.await?;
    server = returned;
    ensure!(sample(&metrics?, "wmproxy_tunnels_accepted_total", &[]) == Some(1.0), "the client reconnected");
    client.stop().await?;
    server.stop().await?;
    drop((public, home));
    Ok(())
}

/// `[limits] keep_alive_secs` sets how often a quiet tunnel speaks: at 1 s the NAT forwards
/// several times the packets it forwards at the default 10 s over the same quiet time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_interval_is_the_clients_setting() -> Result<()> {
    if let Some(why) = Netbed::unavailable() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    const QUIET: Duration = Duration::from_secs(12);
    let mut packets = Vec::new();
    for keep_alive_secs in [10, 1] {
        let bed = Netbed::start(Mapping::PortPreserving)?;
        let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
        let mut server = netbed::public_server(&public).await?;
        let mut config = server.client_config("quiet");
        config.limits.keep_alive_secs = keep_alive_secs;
        let mut client = home.handle().spawn(TestClient::start(config)).await??;
        client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
        let (before, _) = bed.forwarded()?;
        // The quiet period is the measurement.
        tokio::time::sleep(QUIET).await;
        let (after, _) = bed.forwarded()?;
        packets.push(after - before);
        client.stop().await?;
        server.stop().await?;
        drop((public, home, bed));
    }
    println!("packets through the NAT in {QUIET:?} of quiet: {} at 10 s, {} at 1 s", packets[0], packets[1]);
    ensure!(packets[1] >= 3 * packets[0].max(2), "keep-alives at 1 s: {packets:?}");
    Ok(())
}
