//! TCP through the tunnel: bulk data both ways, many concurrent connections, half-close.

use anyhow::Result;
use tokio::net::TcpStream;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{TestClient, TestServer, echo_client, init_tracing, tcp_service};

const BULK: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_64_mib_each_way_is_intact() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_client, public) = echo_client(&server, "home").await?;

    backend::bulk_echo(TcpStream::connect(public).await?, BULK, 42).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_each_get_their_own_bytes() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_client, public) = echo_client(&server, "home").await?;

    let mut tasks = Vec::new();
    for i in 0..200u64 {
        tasks.push(tokio::spawn(async move { backend::assert_echo(public, 16 * 1024 + i as usize, i).await }));
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

/// `max_streams_per_client` holds exactly, for public connections to a client and for forwards
/// from it, and the whole limit is usable right after earlier streams closed (quinn returns
/// stream credit in batches of 1/8; the transport config leaves room for that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_exact_both_ways() -> Result<()> {
    init_tracing();
    const LIMIT: usize = 40;
    let echo = backend::echo().await?;
    let server = TestServer::start(|f| {
        f.limits.max_streams_per_client = LIMIT as u32;
        f.egress.allow = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("echo", echo, 0));
    config.forwards.push(wmproxy_tests::forward_to(echo));
    let mut client = TestClient::start(config).await?;
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));
    let forward = client.forward_addrs[0];

    for addr in [public, forward] {
        // A few closed connections: fewer than quinn's batch, so their credit is held back.
        for i in 0..4 {
            let msg = pattern(100, i);
            assert_eq!(backend::round_trip(addr, &msg).await?, msg);
        }
        let open = backend::hold_open(addr, LIMIT).await?;
        backend::assert_refused(addr).await?;
        drop(open);
    }
    Ok(())
}
