//! The tunnel on the network test bed (issue 14): what NATs do to it. Each test builds its own
//! bed and skips, saying why, where one cannot be built (see `netbed.rs`).
//!
//! - NAT rebinding: the NAT forgets the client's mapping in the middle of a transfer and gives
//!   it a new port; the tunnel migrates to it without reconnecting, and the transfer arrives
//!   intact.
//! - Roaming: the home host's own address changes; the client moves the tunnel to a new socket
//!   and the server migrates it, mid-transfer and while idle.
//! - NAT idle timeout: an idle tunnel outlives a 30 s UDP mapping timeout for two minutes.
//! - Outage: a blackholed path; the server frees the silent client, which comes back when the
//!   path does.
//! - MTU: a 1280-byte path carries TCP and 1,200-byte UDP packets; on a 1500-byte path QUIC
//!   finds a larger MTU (the server's `/status` shows it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_tests::metrics::{parse, sample};
use wmproxy_tests::netbed::{self, InNetns, Mapping};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, eventually, eventually_async, tcp_service};

/// The server's control API (it listens on the public host's loopback).
fn api(server: &TestServer) -> Result<SocketAddr> {
    server.handle.control_addr().context("the control API")
}

/// The server's `/status` of its first client, asked on the public host.
async fn client_status(public: &InNetns, api: SocketAddr) -> Result<serde_json::Value> {
    let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    Ok(status["clients"][0].clone())
}

/// The server's view of its one client: its address.
async fn client_address(public: &InNetns, api: SocketAddr) -> Result<String> {
    Ok(client_status(public, api).await?["address"].as_str().context("one client")?.to_owned())
}

/// The server's metric `name`, asked on the public host.
async fn metric(public: &InNetns, api: SocketAddr, name: &str) -> Result<Option<f64>> {
    Ok(sample(&parse(&public.get(api, "/metrics").await?)?, name, &[]))
}

/// A server on the public host, and a client behind the NAT publishing a TCP and a UDP echo
/// of the home host; returns them and the two public ports.
async fn echoes(public: &InNetns, home: &InNetns) -> Result<(TestServer, TestClient, u16, u16)> {
    let server = netbed::public_server(public).await?;
    let tcp_echo = home.run(backend::echo()).await??;
    let udp_echo = home.run(wmproxy_tests::udp::echo()).await??;
    let mut config = server.client_config("echoes");
    config.services.push(tcp_service("tcp", tcp_echo, 0));
    config.services.push(wmproxy_tests::udp::service("udp", udp_echo, 0));
    let mut client = home.run(TestClient::start(config)).await??;
    let (tcp, udp) = (client.port_of("tcp").await?, client.port_of("udp").await?);
    Ok((server, client, tcp, udp))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nat_rebinding_mid_transfer_migrates_the_tunnel_and_loses_nothing() -> Result<()> {
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::Random)? else { return Ok(()) };
    const LEN: usize = 64 << 20;
    let mut server = netbed::public_server(&public).await?;
    let api = api(&server)?;
    let (sink, received) = home.run(backend::checksum_sink()).await??;
    let mut config = server.client_config("rebinding");
    config.services.push(tcp_service("sink", sink, 0));
    let mut client = home.run(TestClient::start(config)).await??;
    let port = client.port_of("sink").await?;
    let before = client_address(&public, api).await?;

    let data = backend::pattern(LEN, 11);
    let expected = backend::checksum(&data);
    let upload = upload(&public, port, data);
    // A quarter in, the NAT forgets every mapping: the client's next packet gets a new port.
    eventually("a quarter of the upload", || received.load(Ordering::Relaxed) >= (LEN / 4) as u64).await?;
    bed.flush_mappings()?;
    arrived_intact(upload, LEN, expected).await?;

    // The same tunnel, now at another port of the NAT: migrated, not reconnected.
    let after = client_address(&public, api).await?;
    ensure!(after != before && after.starts_with(&format!("{}:", netbed::NAT_WAN)), "{before} -> {after}");
    let accepted = metric(&public, api, "wmproxy_tunnels_accepted_total").await?;
    ensure!(accepted == Some(1.0), "the client reconnected");
    ensure!(matches!(*client.status.borrow(), ClientStatus::Connected { .. }));

    client.stop().await?;
    server.stop().await?;
    Ok(())
}

/// A user on the public host uploads `data` to the checksum sink published on `port`; the
/// upload's answer (count and checksum), as a task started at once.
fn upload(public: &InNetns, port: u16, data: Vec<u8>) -> impl Future<Output = Result<[u8; 16]>> + use<> {
    let sent = public.run(async move {
        let mut user = TcpStream::connect((netbed::PUBLIC, port)).await?;
        user.write_all(&data).await?;
        user.shutdown().await?;
        let mut answer = [0u8; 16];
        tokio::time::timeout(DEADLINE, user.read_exact(&mut answer)).await??;
        anyhow::Ok(answer)
    });
    async move { sent.await? }
}

/// Whether the [`upload`] arrived whole: `len` bytes with checksum `expected`.
async fn arrived_intact(upload: impl Future<Output = Result<[u8; 16]>>, len: usize, expected: u64) -> Result<()> {
    let answer = tokio::time::timeout(DEADLINE * 3, upload).await.context("the upload stalled")??;
    let (count, hash) = (u64::from_be_bytes(answer[..8].try_into()?), u64::from_be_bytes(answer[8..].try_into()?));
    ensure!(
        count == len as u64 && hash == expected,
        "{count} of {len} bytes arrived, checksum match: {}",
        hash == expected
    );
    Ok(())
}

/// The home host changes address, as a laptop moving from Wi-Fi to a mobile link: the client
/// notices within a second, moves the tunnel to a new socket, and the server migrates the
/// connection. A transfer in flight arrives intact; after a second change, while idle, the
/// public side reaches the service again within seconds rather than at the client's next
/// keep-alive (25 s here). No reconnection either time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_home_address_changes_the_client_moves_the_tunnel_and_loses_nothing() -> Result<()> {
    use std::net::Ipv4Addr;
    const LEN: usize = 32 << 20;
    const SECOND: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
    const THIRD: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 4);
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    let mut server = netbed::public_server(&public).await?;
    let api = api(&server)?;
    let (sink, received) = home.run(backend::checksum_sink()).await??;
    let echo = home.run(backend::echo()).await??;
    let mut config = server.client_config("roaming");
    config.services.push(tcp_service("sink", sink, 0));
    config.services.push(tcp_service("echo", echo, 0));
    config.limits.keep_alive_secs = 25;
    config.control = Some(wmproxy_tests::control_api());
    let mut client = home.run(TestClient::start(config)).await??;
    let (sink_port, echo_port) = (client.port_of("sink").await?, client.port_of("echo").await?);
    let client_api = client.control_addr.context("the client's control API")?;
    let rebinds = async || -> Result<Option<f64>> {
        Ok(sample(&parse(&home.get(client_api, "/metrics").await?)?, "wmproxy_client_endpoint_rebinds_total", &[]))
    };

    // 50 Mbit/s: the upload takes about 5 s, so the move (noticed within a second) happens
    // while it is in flight.
    bed.set_rate(50)?;
    let data = backend::pattern(LEN, 5);
    let expected = backend::checksum(&data);
    let upload = upload(&public, sink_port, data);
    eventually("a quarter of the upload", || received.load(Ordering::Relaxed) >= (LEN / 4) as u64).await?;
    bed.renumber_home(netbed::HOME, SECOND)?;
    eventually_async("the client moved its tunnel", async || Ok(rebinds().await? == Some(1.0))).await?;
    let at_move = received.load(Ordering::Relaxed);
    ensure!(at_move < LEN as u64, "the upload ended before the move");
    arrived_intact(upload, LEN, expected).await?;
    println!("moved with {at_move} of {LEN} bytes uploaded");

    // Idle now: nothing crosses the NAT for a second (keep-alives come every 25 s). Then the
    // address changes again, and the public side must not wait for the next keep-alive.
    quiet(&bed, Duration::from_secs(1)).await?;
    bed.renumber_home(SECOND, THIRD)?;
    let moved = tokio::time::Instant::now();
    let echoed = public.echo_through(echo_port, 4096, 1);
    tokio::time::timeout(Duration::from_secs(6), echoed).await.context("no echo 6 s after the move")??;
    println!("idle tunnel carried again {:?} after the home host's address changed", moved.elapsed());
    eventually_async("the client moved its tunnel again", async || Ok(rebinds().await? == Some(2.0))).await?;
    let accepted = metric(&public, api, "wmproxy_tunnels_accepted_total").await?;
    ensure!(accepted == Some(1.0), "the client reconnected");
    client.stop().await?;
    server.stop().await?;
    Ok(())
}

/// Waits until the NAT has forwarded nothing for `quiet` (within [`DEADLINE`]).
async fn quiet(bed: &netbed::Netbed, quiet: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (mut last, mut since) = (bed.forwarded()?.0, tokio::time::Instant::now());
    while since.elapsed() < quiet {
        ensure!(tokio::time::Instant::now() < deadline, "the NAT never went quiet");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = bed.forwarded()?.0;
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        }
    }
    Ok(())
}

/// Over a path with a 1280-byte MTU the tunnel works, TCP and UDP, and a UDP service's
/// 1,200-byte packets still pass (as datagrams where they fit, else on the flow's stream);
/// over a 1500-byte path QUIC finds a larger MTU than its 1200-byte start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1280_byte_path_carries_everything_and_a_1500_byte_path_is_discovered() -> Result<()> {
    for (mtu, found) in [(1280u32, 1200..=1252u64), (1500, 1253..=1472)] {
        let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
        bed.set_mtu(mtu)?;
        let (mut server, mut client, tcp, udp) = echoes(&public, &home).await?;
        let api = api(&server)?;
        let traffic = public.run(async move {
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
        let settled = |status: &serde_json::Value| status["mtu"].as_u64().is_some_and(|m| found.contains(&m));
        let mut status = client_status(&public, api).await?;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !settled(&status) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = client_status(&public, api).await?;
        }
        ensure!(settled(&status), "path MTU {mtu}: the tunnel found {}", status["mtu"]);
        client.stop().await?;
        server.stop().await?;
    }
    Ok(())
}

/// The path goes dark: the server gives the silent tunnel up within its idle timeout (30 s from
/// the client's last packet: the server sends no keep-alives, which would restart its timer)
/// and frees the client's port; once the path is back the client reconnects within one attempt and
/// one backoff step, and the server holds exactly one session of it, no zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_server_frees_the_client_and_the_client_comes_back() -> Result<()> {
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    let (mut server, mut client, tcp, _) = echoes(&public, &home).await?;
    let api = api(&server)?;
    let dark = tokio::time::Instant::now();
    bed.set_loss(1000)?;

    // The server: no client within its idle timeout, and the public port closed.
    let gone = loop {
        let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
        if status["clients"].as_array().is_some_and(Vec::is_empty) {
            break dark.elapsed();
        }
        ensure!(dark.elapsed() < Duration::from_secs(45), "the server still holds the dark client");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let limit = wmproxy_tunnel::transport::IDLE_TIMEOUT + Duration::from_secs(1);
    ensure!(gone <= limit, "the server took {gone:?} to give the tunnel up");
    public.run(backend::refused(tcp)).await??;

    // The path comes back. The client may not have noticed the outage yet (its own idle timer
    // runs up to a keep-alive period longer); its next packet meets the server's stateless
    // reset, or its timer fires, and it reconnects at once: within a keep-alive period and a
    // backoff step. Its status alone cannot show that (it may still say connected, from
    // before), so the server is asked.
    bed.set_loss(0)?;
    let back = tokio::time::Instant::now();
    let limit = wmproxy_tunnel::transport::KEEP_ALIVE + wmproxy_client::backoff::MAX;
    loop {
        let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
        if status["clients"][0]["name"] == "echoes" {
            break;
        }
        ensure!(back.elapsed() < limit, "the client did not come back within {limit:?} of the path");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let returned_in = back.elapsed();
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let active = metric(&public, api, "wmproxy_tunnels_active").await?;
    ensure!(active == Some(1.0), "one session, no zombie: {active:?}");
    let accepted = metric(&public, api, "wmproxy_tunnels_accepted_total").await?;
    ensure!(accepted == Some(2.0), "a new tunnel after the outage: {accepted:?}");
    println!("server gave up after {gone:?}; client back {returned_in:?} after the path");
    client.stop().await?;
    server.stop().await?;
    Ok(())
}

/// A NAT that forgets idle UDP mappings after 30 s does not cut an idle tunnel: after two
/// minutes of silence the public side still reaches the home service through the same tunnel
/// (keep-alives every 10 s hold the mapping). Prints what the keep-alives cost on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_outlives_a_30_s_nat_mapping_timeout() -> Result<()> {
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::Random)? else { return Ok(()) };
    const IDLE: Duration = Duration::from_secs(120);
    bed.set_udp_timeout(30)?;
    let (mut server, mut client, tcp, _) = echoes(&public, &home).await?;
    let api = api(&server)?;
    let before = client_address(&public, api).await?;

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

    public.echo_through(tcp, 64 * 1024, 9).await.context("the idle tunnel no longer carries")?;
    let after = client_address(&public, api).await?;
    ensure!(after == before, "the mapping changed ({before} -> {after}): the NAT forgot it while idle");
    let accepted = metric(&public, api, "wmproxy_tunnels_accepted_total").await?;
    ensure!(accepted == Some(1.0), "the client reconnected");
    client.stop().await?;
    server.stop().await?;
    Ok(())
}

/// `[limits] keep_alive_secs` sets how often a quiet tunnel speaks: at 1 s the NAT forwards
/// several times the packets it forwards at the default 10 s over the same quiet time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_interval_is_the_clients_setting() -> Result<()> {
    const QUIET: Duration = Duration::from_secs(12);
    let mut packets = Vec::new();
    for keep_alive_secs in [10, 1] {
        let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
        let mut server = netbed::public_server(&public).await?;
        let mut config = server.client_config("quiet");
        config.limits.keep_alive_secs = keep_alive_secs;
        let mut client = home.run(TestClient::start(config)).await??;
        client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
        let (before, _) = bed.forwarded()?;
        // The quiet period is the measurement.
        tokio::time::sleep(QUIET).await;
        let (after, _) = bed.forwarded()?;
        packets.push(after - before);
        client.stop().await?;
        server.stop().await?;
    }
    println!("packets through the NAT in {QUIET:?} of quiet: {} at 10 s, {} at 1 s", packets[0], packets[1]);
    ensure!(packets[1] >= 3 * packets[0].max(2), "keep-alives at 1 s: {packets:?}");
    Ok(())
}
