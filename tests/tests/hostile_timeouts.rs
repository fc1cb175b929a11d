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
