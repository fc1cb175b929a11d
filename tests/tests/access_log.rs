//! The client's access log: one `wmproxy::access` event per finished connection to a service,
//! with the user's address, the backend, the bytes each way and the result; off for a service
//! with `access_log = false`. (Its own test binary: it counts every access event the binary logs.)

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::logs::Logs;
use wmproxy_tests::{TestClient, TestServer, eventually, tcp_service};

/// Sends `len` bytes through `port`, reads the echo, and returns the user's address.
async fn echo_through(port: u16, len: usize) -> Result<std::net::SocketAddr> {
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let me = user.local_addr()?;
    user.write_all(&pattern(len, 1)).await?;
    user.shutdown().await?;
    let mut back = Vec::new();
    user.read_to_end(&mut back).await?;
    ensure!(back.len() == len, "echo of {len} bytes came back as {}", back.len());
    Ok(me)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finished_connection_is_logged_unless_its_service_opts_out() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|_| {}).await?;
    let echo = backend::echo().await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("logged", echo, 0));
    config.services.push(wmproxy_config::Service { access_log: false, ..tcp_service("quiet", echo, 0) });
    let mut client = TestClient::start(config).await?;
    let (logged, quiet) = (client.port_of("logged").await?, client.port_of("quiet").await?);

    echo_through(quiet, 5_000).await?;
    let first = echo_through(logged, 3_000).await?;
    let second = echo_through(logged, 7_000).await?;
    let access = || logs.matching(|e| e.target == "wmproxy::access");
    eventually("two access log events", || access().len() >= 2).await?;

    let seen = access();
    ensure!(seen.len() == 2 && seen.iter().all(|e| e.field("service") == "logged"), "{seen:?}");
    for (user, len) in [(first, 3_000), (second, 7_000)] {
        let event = seen.iter().find(|e| e.field("user") == user.to_string());
        let Some(event) = event else { anyhow::bail!("no event for {user}: {seen:?}") };
        ensure!(event.field("bytes_in") == len.to_string() && event.field("bytes_out") == len.to_string(), "{event:?}");
        ensure!(event.field("backend") == echo.to_string() && event.field("result") == "ok", "{event:?}");
        ensure!(event.fields.contains_key("duration_ms"), "{event:?}");
    }
    Ok(())
}
