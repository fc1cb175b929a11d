//! The tunnel on the network test bed (issue 14): what NATs do to it. Each test builds its own
//! bed and skips, saying why, where one cannot be built (see `netbed.rs`).
//!
//! - NAT rebinding: the NAT forgets the client's mapping in the middle of a transfer and gives
//!   it a new port; the tunnel migrates to it without reconnecting, and the transfer arrives
//!   intact.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::netbed::{self, InNetns, Mapping, Netbed};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, eventually, tcp_service};

/// The server's view of the one client: its address.
async fn client_address(public: &InNetns, server: TestServer) -> Result<(TestServer, String)> {
    let asked = public.handle().spawn(async move {
        let status = server.control("GET", "/status", "").await;
        (server, status)
    });
    let (server, status) = asked.await?;
    let status: serde_json::Value = serde_json::from_str(&status?.1)?;
    let address = status["clients"][0]["address"].as_str().context("one client")?.to_owned();
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
    let server = public.handle().spawn(TestServer::start(|f| {
        f.bind = (netbed::PUBLIC, 0).into();
        f.public_bind = netbed::PUBLIC.into();
    }));
    let server = server.await??;
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
