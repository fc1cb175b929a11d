//! Start-up lines: every listener either end opens is logged with its address (item 5).

use anyhow::{Context, Result, ensure};
use wmproxy_config::ProxyType;
use wmproxy_config::proxy::{ServerProxyFields, ServerProxyFile};
use wmproxy_tests::logs::{Event, Logs};
use wmproxy_tests::{TestClient, TestServer, backend, forward_to, groups, proxy};

/// Waits for the "listening" line of `listener` at `addr`.
async fn listening(logs: &Logs, listener: &str, addr: std::net::SocketAddr) -> Result<Event> {
    let what = format!("a listening line for the {listener} at {addr}");
    let addr = addr.to_string();
    let found = logs.wait_for(&what, |e| {
        e.message == "listening" && e.field("listener") == listener && e.field("addr").contains(&addr)
    });
    found.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_logs_every_listener_it_opens() -> Result<()> {
    let logs = Logs::capture();
    let group_port = backend::dead_port().await?;
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some(([127, 0, 0, 1], 0).into());
        f.vhost.https_bind = Some(([127, 0, 0, 1], 0).into());
        f.groups.push(groups::tcp_group("web", group_port.port(), wmproxy_config::Policy::RoundRobin));
        let fields = ServerProxyFields {
            listen: ([127, 0, 0, 1], 0).into(),
            via: toml::Spanned::new(0..0, "office".to_owned()),
            username: None,
            password: None,
            handshake_timeout_secs: 10,
        };
        f.proxies.push(ServerProxyFile::Socks5(fields));
    })
    .await?;
    let h = &server.handle;
    listening(&logs, "tunnel", server.addr).await?;
    listening(&logs, "control", h.control_addr().context("control")?).await?;
    listening(&logs, "vhost", h.vhost_addr().context("vhost")?).await?;
    listening(&logs, "https", h.https_addr().context("https")?).await?;
    let group = listening(&logs, "group", ([127, 0, 0, 1], group_port.port()).into()).await?;
    ensure!(group.field("group") == "web" && group.field("protocol") == "tcp", "{group:?}");
    let socks = listening(&logs, "proxy", h.proxy_addrs()[0]).await?;
    ensure!(socks.field("kind") == "socks5" && socks.field("via") == "office", "{socks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_logs_every_forward_and_proxy_it_opens() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|_| {}).await?;
    let target = backend::echo().await?;
    let mut config = server.client_config("home");
    config.forwards.push(forward_to(target));
    config.proxies.push(proxy::proxy(ProxyType::Http, None));
    config.control = Some(wmproxy_tests::control_api());
    let client = TestClient::start(config).await?;
    let forward = listening(&logs, "forward", client.forward_addrs[0]).await?;
    ensure!(forward.field("target") == target.to_string() && forward.field("protocol") == "tcp", "{forward:?}");
    let http = listening(&logs, "proxy", client.forward_addrs[1]).await?;
    ensure!(http.field("kind") == "http", "{http:?}");
    listening(&logs, "control", client.control_addr.context("control")?).await?;
    Ok(())
}
