//! Tunnel lifecycle: server restart, client departure, dead backends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, init_tracing, tcp_service};

/// Retries a round trip through `addr` every 20 ms until it succeeds or [`DEADLINE`] passes.
async fn poll_until_echo(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(Ok(back)) = tokio::time::timeout(Duration::from_secs(2), backend::round_trip(addr, msg)).await {
            if back == msg {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no echo through {addr} before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_a_server_restart() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let mut server = TestServer::start(|_| {}).await?;
    let fingerprint = server.fingerprint;
    // A specific public port, so the same address answers before and after the restart.
    let public = backend::dead_port().await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("echo", echo, public.port()));
    let mut client = TestClient::start(config).await?;
    assert_eq!(client.port_of("echo").await?, public.port());
    let msg = pattern(1000, 5);
    poll_until_echo(public, &msg).await?;

    server.restart().await?;
    let back = Instant::now();
    assert_eq!(server.fingerprint, fingerprint, "identity kept in the state dir");
    poll_until_echo(public, &msg).await?;
    let took = back.elapsed();
    println!("service answered again {took:?} after the server was back");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(server.handle.clients(), ["home"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_refuses_once_the_client_is_gone() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (mut client, public) = wmproxy_tests::echo_client(&server, "home").await?;

    client.stop().await?;
    let gone = Instant::now();
    let refused_after = loop {
        match TcpStream::connect(public).await {
            Err(_) => break gone.elapsed(),
            Ok(mut s) => {
                // Accepted in the moment before the server noticed: it must close promptly.
                let mut buf = [0u8; 1];
                let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
                assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "connection neither refused nor closed: {read:?}");
            }
        }
        if gone.elapsed() > DEADLINE {
            bail!("public port still accepting");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("public port refused {refused_after:?} after the client left");
    assert!(refused_after < Duration::from_secs(1), "took {refused_after:?}");
    assert!(server.handle.clients().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_closes_the_user_connection_promptly() -> Result<()> {
    init_tracing();
    let dead = backend::dead_port().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("dead", dead, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("dead").await?;

    let started = Instant::now();
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), user.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "expected a close, got {read:?}");
    println!("user connection to a dead backend closed after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_server_connects_once_the_server_is_up() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let mut server = TestServer::start(|_| {}).await?;
    let public = backend::dead_port().await?;
    let mut config = server.client_config("early");
    config.services.push(tcp_service("echo", echo, public.port()));
    server.stop().await?;

    // The server is down: the client keeps trying instead of giving up.
    let mut client = TestClient::start(config).await?;
    assert!(matches!(*client.status.borrow(), wmproxy_client::ClientStatus::Connecting { .. }));

    server.restart().await?;
    assert_eq!(client.port_of("echo").await?, public.port());
    poll_until_echo(public, &pattern(500, 6)).await?;
    Ok(())
}
