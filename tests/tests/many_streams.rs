//! A stream limit above what a client used to grant is honoured exactly. In a test binary of its
//! own: it holds 19,000 sockets in one process.

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{
    TestClient, TestServer, backend, eventually_async, init_tracing, open_files_at_least, tcp_service,
};

/// Above the 4,609 streams a client used to give the server whatever its limit (4,096 and
/// quinn's slack): past them, connections hung until the stream-open timeout.
const LIMIT: u32 = 4_700;

/// Every held connection costs four sockets here: the user's, the server's, the client's
/// dial and the backend's. (Under the 20,000 a process may have here: without
/// `CAP_SYS_RESOURCE` the hard limit cannot be raised.)
const FILES: u64 = 4 * LIMIT as u64 + 500;

/// The server's `max_streams_per_client` reaches the client in its Welcome, and the client
/// grants that much stream credit: `LIMIT` connections are held at once, each passes an echo,
/// and one more is refused at once (closed, and counted), never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_grants_the_servers_whole_stream_limit() -> Result<()> {
    init_tracing();
    open_files_at_least(FILES)?;
    let echo = backend::echo().await?;
    let server = TestServer::start(|f| {
        f.limits.max_streams_per_client = LIMIT;
        f.limits.max_connections_per_user = 2 * LIMIT;
    })
    .await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let public = std::net::SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));

    let mut held = backend::hold_open(public, LIMIT as usize).await?;
    backend::assert_refused(public).await?;
    let counted = async || {
        let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "streams_per_client")]);
        Ok(refused == Some(1.0))
    };
    eventually_async("the refusal counted", counted).await?;

    // The held ones still carry bytes.
    for (i, s) in held.iter_mut().enumerate().step_by(499) {
        s.write_all(b"z").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.with_context(|| format!("held connection {i}"))?;
        anyhow::ensure!(&b == b"z");
    }
    Ok(())
}
