//! TCP through the tunnel: bulk data both ways, many concurrent connections, half-close.

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_tests::backend::{self, checksum, pattern};
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service};

const BULK: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_is_intact() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;

    let data = pattern(BULK, 42);
    let expected = checksum(&data);
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut back = Vec::with_capacity(BULK);
    r.read_to_end(&mut back).await?;
    writer.await??;
    assert_eq!(back.len(), BULK);
    assert_eq!(checksum(&back), expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_each_get_their_own_bytes() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move {
            let msg = pattern(16 * 1024 + i as usize, i);
            let back = backend::round_trip(([127, 0, 0, 1], port).into(), &msg).await?;
            anyhow::ensure!(back == msg, "connection {i} got other bytes");
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_full_reply_arrive() -> Result<()> {
    init_tracing();
    let backend = backend::reply_after_eof().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("svc", backend, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("svc").await?;

    let request = pattern(100_000, 9);
    let reply = backend::round_trip(([127, 0, 0, 1], port).into(), &request).await?;
    assert_eq!(reply.len(), 1024 * 1024);
    assert!(reply == backend::reply_for(&request), "reply arrived intact after the user's half-close");
    Ok(())
}
