//! Many hostile connections do not make the server grow. In a test binary of its own, so no
//! other test's allocations share the process while it measures.

use anyhow::{Context, Result};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{DEADLINE, TestServer, init_tracing, raw};
use wmproxy_tunnel::stream::read_frame;
use wmproxy_wire::HelloReply;

/// Resident set size of this process, bytes (Linux).
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4096)
}

async fn hostile_hello(endpoint: &quinn::Endpoint, server: &TestServer, bytes: &[u8]) -> Result<()> {
    let conn = raw::connect_from(endpoint, server).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(DEADLINE, read_frame::<HelloReply, _>(&mut recv)).await?;
    tokio::time::timeout(DEADLINE, conn.closed()).await?;
    Ok(())
}

async fn batch(endpoint: &quinn::Endpoint, server: &TestServer, n: u64) -> Result<()> {
    for i in 0..n {
        let bytes = if i % 2 == 0 { vec![0xff, 0xff, 0xff, 0xff] } else { pattern(300, i) };
        hostile_hello(endpoint, server, &bytes).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hostile_connections_do_not_grow_the_server() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_good, public) = wmproxy_tests::echo_client(&server, "good").await?;
    let endpoint = raw::endpoint()?;

    let baseline = server.handle.tasks();
    // Warm up: allocator arenas and quinn's buffers reach their working size.
    batch(&endpoint, &server, 200).await?;
    // Two equal batches: a leak grows RSS in both, while allocator noise (arenas growing once
    // when both cores are busy, seen up to 11 MiB) shows in one at most.
    let mut growth = Vec::new();
    for _ in 0..2 {
        let before = rss_bytes()?;
        batch(&endpoint, &server, 600).await?;
        growth.push(rss_bytes()?.saturating_sub(before));
        println!(
            "RSS {} KiB before, +{} KiB after 600 more hostile connections",
            before / 1024,
            growth[growth.len() - 1] / 1024
        );
    }
    let grown = growth.iter().copied().min().unwrap_or(0);

    // Structurally: every hostile connection's task is gone (the last may still be finishing,
    // so poll).
    let deadline = std::time::Instant::now() + DEADLINE;
    while server.handle.tasks() != baseline {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "server still runs {} tasks, baseline {baseline}",
            server.handle.tasks()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Coarsely: a leak of 16 KiB per connection would add over 9 MiB in each batch.
    assert!(grown < 9 * 1024 * 1024, "RSS grew by {growth:?} bytes");

    assert_eq!(server.handle.clients(), ["good"]);
    assert_eq!(server.handle.throttled_addresses(), 0, "garbage is not a failed login");
    backend::assert_echo(public, 8192, 3).await?;
    Ok(())
}
