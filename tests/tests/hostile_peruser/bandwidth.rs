//! Per-service bandwidth (frp's `bandwidthLimit`): each end limits what it sends into the
//! tunnel, the server the users' bytes and the client the service's. TCP slows down and loses
//! nothing; UDP over the limit is dropped and counted.
//!
//! The timings are lower bounds only (a loaded machine makes a transfer slower, never faster),
//! so they cannot fail because the machine is busy.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use wmproxy_config::{Exposure, Service};
use wmproxy_tests::backend::{checksum, checksum_sink, pattern, source};
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, init_tracing, tcp_service, udp};

/// The limit in these tests, bytes per second.
const LIMIT: u64 = 128 * 1024;
/// Three seconds of it: one passes at once (the bucket starts full), the rest take two.
const PAYLOAD: usize = 3 * LIMIT as usize;
/// What the remaining two seconds cannot take less than, with slack for timer granularity.
const AT_LEAST: Duration = Duration::from_millis(1500);

fn limited(mut service: Service) -> Service {
    match &mut service.exposure {
        Exposure::Tcp { bandwidth_limit, .. } | Exposure::Udp { bandwidth_limit, .. } => *bandwidth_limit = Some(LIMIT),
        _ => {}
    }
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_is_held_to_its_limit_both_ways_and_loses_nothing() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let data = pattern(PAYLOAD, 11);
    let (sink, _) = checksum_sink().await?;
    let mut config = server.client_config("home");
    config.services = vec![
        limited(tcp_service("up", sink, 0)),
        limited(tcp_service("down", source(std::sync::Arc::new(data.clone())).await?, 0)),
    ];
    let mut client = TestClient::start(config).await?;
    let (up, down) = (client.port_of("up").await?, client.port_of("down").await?);

    // User → service: the server holds the users' bytes to the limit.
    let upload = async {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", up)).await?;
        tcp.write_all(&data).await?;
        tcp.shutdown().await?;
        let mut answer = [0u8; 16];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut answer)).await??;
        let (count, hash) = (u64::from_be_bytes(answer[..8].try_into()?), u64::from_be_bytes(answer[8..].try_into()?));
        ensure!(count == PAYLOAD as u64 && hash == checksum(&data), "upload arrived altered: {count} bytes");
        anyhow::Ok(started.elapsed())
    };
    // Service → user: the client holds the service's bytes to the limit.
    let download = async {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(("127.0.0.1", down)).await?;
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut got)).await??;
        ensure!(got == data, "download arrived altered: {} bytes", got.len());
        anyhow::Ok(started.elapsed())
    };
    let (upload, download) = tokio::join!(upload, download);
    let (upload, download) = (upload?, download?);
    println!("{PAYLOAD} bytes at {LIMIT} bytes/s: upload {upload:?}, download {download:?}");
    ensure!(upload >= AT_LEAST, "the upload was not held to the limit: {upload:?}");
    ensure!(download >= AT_LEAST, "the download was not held to the limit: {download:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_service_over_its_limit_drops_and_counts() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services = vec![limited(udp::service("dns", udp::echo().await?, 0))];
    let mut client = TestClient::start(config).await?;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port_of("dns").await?));

    // Four seconds of the limit at once: the first second's worth passes, most of the rest is
    // dropped at the server.
    const PACKET: usize = 1024;
    const SENT: usize = 4 * LIMIT as usize / PACKET;
    let user = udp::user().await?;
    udp::request(&user, public, b"first").await.context("the flow starts")?;
    for i in 0..SENT {
        user.send_to(&pattern(PACKET, i as u64), public).await?;
    }
    let mut echoed = 0;
    let mut buf = [0u8; 2048];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), user.recv_from(&mut buf)).await {
        echoed += 1;
    }
    println!("{SENT} packets of {PACKET} bytes sent at once, {echoed} echoed");
    ensure!(echoed > 0 && echoed < SENT / 2, "{echoed} of {SENT} echoed");
    let dropped = sample(&scrape(&server).await?, "wmproxy_udp_datagrams_dropped_total", &[("cause", "bandwidth")]);
    ensure!(dropped.is_some_and(|d| d > 0.0), "drops counted: {dropped:?}");
    Ok(())
}
