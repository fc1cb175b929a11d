//! Timeouts and caps that hold: what a slow, silent or oversized peer can hold on to is
//! bounded, and a permit is held as long as what it stands for.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wmproxy_client::ClientStatus;
use wmproxy_config::{Exposure, HttpRoute, Publish, Service, WsRoute};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::proxy::{keep_alive_request, websocket_echo};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, eventually_async, http_service, init_tracing};

/// A server with a vhost port for `*.example.com`, adjusted by `adjust`, and a client `home`
/// publishing `services`; the vhost's address.
async fn vhost_with(
    adjust: impl FnOnce(&mut wmproxy_config::server::ServerFile),
    services: Vec<Service>,
) -> Result<(TestServer, TestClient, SocketAddr)> {
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.allow_domains = vec!["*.example.com".into()];
        adjust(f);
    })
    .await?;
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let mut config = server.client_config("home");
    config.services = services;
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    Ok((server, client, vhost))
}

fn route(host: &str) -> HttpRoute {
    HttpRoute { custom_domains: vec![host.into()], ..HttpRoute::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_of_the_bridge_cannot_send_more_than_a_message_cap() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let ws = WsRoute { custom_domains: vec!["bridge.example.com".into()], ..WsRoute::default() };
    let exposure = Exposure::Ws { publish: Publish::Own(ws), proxy_protocol: None };
    let service = Service { exposure, ..http_service("bridge", echo, route("unused.example.com")) };
    let (_server, _client, vhost) = vhost_with(|_| {}, vec![service]).await?;

    let (mut ws, _) =
        tokio_tungstenite::client_async("ws://bridge.example.com/", TcpStream::connect(vhost).await?).await?;
    // Under the cap: carried (the echo comes back in chunks).
    let fits = pattern(wmproxy_frontend::wsbridge::MAX_MESSAGE / 2, 1);
    ws.send(Message::binary(fits.clone())).await?;
    let mut back = Vec::new();
    while back.len() < fits.len() {
        back.extend_from_slice(&ws.next().await.context("the echo")??.into_data());
    }
    ensure!(back == fits, "the echo came back altered");
    // Over it: the bridge ends the connection without carrying it (tungstenite's default cap,
    // 64 MiB, would have let it through). The send itself may fail as the connection ends.
    let _ = ws.send(Message::binary(pattern(2 * wmproxy_frontend::wsbridge::MAX_MESSAGE, 2))).await;
    let mut echoed = 0;
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(message)) = ws.next().await {
            echoed += message.into_data().len();
        }
    })
    .await;
    ensure!(ended.is_ok() && echoed == 0, "{echoed} bytes of the oversized message came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_websocket_holds_its_stream_permit_until_it_ends() -> Result<()> {
    init_tracing();
    let backend = websocket_echo().await?;
    let service = http_service("ws", backend, route("ws.example.com"));
    let (_server, _client, vhost) = vhost_with(|f| f.limits.max_streams_per_client = 1, vec![service]).await?;

    let (mut ws, response) =
        tokio_tungstenite::client_async("ws://ws.example.com/", TcpStream::connect(vhost).await?).await?;
    ensure!(response.status() == 101);
    ws.send(Message::text("hello")).await?;
    ensure!(ws.next().await.context("the echo")?? == Message::text("hello"));
    // The upgraded connection holds the client's one stream: another request is turned away.
    let (status, body) = keep_alive_request(&mut TcpStream::connect(vhost).await?, "ws.example.com", "/").await?;
    ensure!(status == 503 && body.contains("busy"), "while the WebSocket is open: {status} {body}");

    // Once it ends, the permit comes back.
    ws.close(None).await?;
    while ws.next().await.is_some() {}
    drop(ws);
    eventually_async("the permit back", async || {
        let (status, _) = keep_alive_request(&mut TcpStream::connect(vhost).await?, "ws.example.com", "/").await?;
        Ok(status != 503)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_with_an_idle_timeout_aborts_a_silent_connection() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let mut service = wmproxy_tests::tcp_service("echo", backend::echo().await?, 0);
    if let Exposure::Tcp { idle_timeout_secs, .. } = &mut service.exposure {
        *idle_timeout_secs = Some(1);
    }
    let mut config = server.client_config("home");
    config.services = vec![service];
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;

    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    user.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    user.read_exact(&mut back).await?;
    let quiet_since = tokio::time::Instant::now();
    // Then nothing either way: the relay is aborted (a reset, not a clean end), no sooner than
    // the timeout.
    let ended = tokio::time::timeout(DEADLINE, user.read(&mut back)).await.context("still open")?;
    let after = quiet_since.elapsed();
    ensure!(ended.is_err(), "the idle connection ended with {ended:?}, not a reset");
    ensure!(after >= std::time::Duration::from_millis(900), "cut after {after:?}, before the timeout");
    Ok(())
}

/// An HTTP backend that reads each request's whole body (by its `Content-Length`) before it
/// answers `200`, as an upload endpoint does.
async fn upload_endpoint() -> Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut byte = [0u8; 1];
                while !seen.ends_with(b"\r\n\r\n") && tcp.read_exact(&mut byte).await.is_ok() {
                    seen.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if tcp.read_exact(&mut body).await.is_ok() {
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408_and_gives_its_stream_back() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let service = http_service("up", upload_endpoint().await?, route("up.example.com"));
    let adjust = |f: &mut wmproxy_config::server::ServerFile| {
        f.vhost.body_timeout_secs = 1;
        f.limits.max_streams_per_client = 1;
    };
    let (_server, _client, vhost) = vhost_with(adjust, vec![service]).await?;

    // A head that promises 1000 bytes of body, then 10 of them, then nothing.
    let mut slow = TcpStream::connect(vhost).await?;
    slow.write_all(b"POST /upload HTTP/1.1\r\nHost: up.example.com\r\nContent-Length: 1000\r\n\r\n0123456789").await?;
    let stalled_at = tokio::time::Instant::now();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(DEADLINE, slow.read(&mut answer)).await.context("no answer")??;
    let after = stalled_at.elapsed();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    ensure!(answer.starts_with("HTTP/1.1 408"), "the stalled upload got {answer:?}");
    ensure!(after >= std::time::Duration::from_millis(900), "answered after {after:?}, before the timeout");

    // The client's one stream is free again: a whole upload goes through.
    let mut whole = TcpStream::connect(vhost).await?;
    whole.write_all(b"POST /upload HTTP/1.1\r\nHost: up.example.com\r\nContent-Length: 3\r\n\r\nabc").await?;
    let mut next = vec![0u8; 256];
    let n = tokio::time::timeout(DEADLINE, whole.read(&mut next)).await.context("no answer")??;
    let next = String::from_utf8_lossy(&next[..n]).to_string();
    ensure!(next.starts_with("HTTP/1.1 200"), "the next upload got {next:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_say_nothing_are_capped() -> Result<()> {
    use std::net::Ipv4Addr;
    use wmproxy_tests::metrics::{sample, scrape};
    init_tracing();
    let (server, _client, vhost) = vhost_with(|f| f.limits.max_silent_connections = 4, vec![]).await?;
    let connect_from = async |last: u8| -> Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))?;
        Ok(socket.connect(vhost).await?)
    };
    let refused = async || -> Result<Option<f64>> {
        Ok(sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "silent_connections")]))
    };
    // Five connections that say nothing: one more than the places.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(connect_from(2).await?);
    }
    eventually_async("one silent connection refused", async || Ok(refused().await? == Some(1.0))).await?;
    // While the places are taken, even a user with a request is turned away.
    let mut late = connect_from(3).await?;
    let turned_away = keep_alive_request(&mut late, "nobody.example.com", "/").await;
    ensure!(turned_away.is_err(), "served while every place was taken: {turned_away:?}");
    // The silent ones leave: the places come back.
    silent.clear();
    eventually_async("a place back", async || {
        let Ok(mut tcp) = connect_from(3).await else { return Ok(false) };
        Ok(keep_alive_request(&mut tcp, "nobody.example.com", "/").await.is_ok_and(|(status, _)| status == 404))
    })
    .await?;
    Ok(())
}
