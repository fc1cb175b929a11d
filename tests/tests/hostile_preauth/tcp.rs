//! The TCP transport's port is on the open internet too: before authentication its connections
//! live in the same budget as QUIC's. A silent one is closed at the auth deadline, garbage
//! instead of TLS is closed, one address gets only its share, and a real client on the TCP
//! transport still gets in.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wmproxy_client::ClientStatus;
use wmproxy_config::Transport;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, init_tracing, tcp_service};

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(addr).await?)
}

/// Waits (within `DEADLINE`) for the server to close `tcp`: a read that ends, or fails.
async fn closed_by_server(tcp: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => anyhow::bail!("the server kept the connection open"),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            // A TLS alert, or the server's part of a handshake: read on to the end.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_tcp_transport_silence_garbage_and_crowds_get_nothing() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| {
        // Long enough that "closed at once" and "closed at the deadline" never meet.
        f.limits.auth_timeout_secs = 3;
        f.limits.max_unauthenticated_per_address = 4;
    })
    .await?;
    let tcp = server.tcp_addr;

    // Silence: closed at the auth deadline, and counted.
    let mut silent = connect_from(Ipv4Addr::new(127, 0, 2, 1), tcp).await?;
    let started = tokio::time::Instant::now();
    closed_by_server(&mut silent).await?;
    let held = started.elapsed();
    ensure!(held >= Duration::from_secs(2) && held < Duration::from_secs(6), "closed after {held:?}");
    let timeouts = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "auth_timeout")]);
    ensure!(timeouts >= Some(1.0), "auth timeouts: {timeouts:?}");

    // Garbage instead of TLS: closed at once.
    let mut garbage = connect_from(Ipv4Addr::new(127, 0, 2, 2), tcp).await?;
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let started = tokio::time::Instant::now();
    closed_by_server(&mut garbage).await?;
    ensure!(started.elapsed() < Duration::from_millis(1500), "garbage held for {:?}", started.elapsed());

    // One address holds its share (4); the next connection from it is closed at once.
    let crowd = Ipv4Addr::new(127, 0, 2, 3);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(crowd, tcp).await?);
    }
    let mut over = connect_from(crowd, tcp).await?;
    let started = tokio::time::Instant::now();
    closed_by_server(&mut over).await?;
    ensure!(started.elapsed() < Duration::from_millis(1500), "over the share, held for {:?}", started.elapsed());
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "unauthenticated_per_address")]);
    ensure!(refused >= Some(1.0), "per-address refusals: {refused:?}");

    // Meanwhile a real client on the TCP transport gets in, and its service answers.
    let echo = backend::echo().await?;
    let mut config = server.client_config("home");
    config.transport = Transport::Tcp;
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected over TCP", |s| matches!(s, ClientStatus::Connected { transport: "tcp", .. })).await?;
    let port = client.port_of("echo").await?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port)), 4096, 5).await?;
    drop(held);
    Ok(())
}
