//! The registry of publications: what a session published (a port, host names, a place in a
//! group) is owned by its entries, and all of it goes when the session ends, through the one
//! teardown path; a host name one session holds is refused to another until then.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::{HttpRoute, Policy};
use wmproxy_tests::groups::{member, tcp_group};
use wmproxy_tests::proxy::{http_tagged, keep_alive_request};
use wmproxy_tests::{TestClient, TestServer, backend, eventually, http_service, init_tracing, tcp_service};
use wmproxy_wire::RegisterOutcome;

fn app(name: &str, local: SocketAddr) -> wmproxy_config::Service {
    let route = HttpRoute { custom_domains: vec!["app.example.com".into()], ..HttpRoute::default() };
    http_service(name, local, route)
}

/// The status code of `GET /` with `Host: app.example.com` on the vhost port.
async fn app_status(vhost: SocketAddr) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(vhost).await?;
    keep_alive_request(&mut conn, "app.example.com", "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_withdraws_its_port_its_host_names_and_its_place_in_a_group() -> Result<()> {
    init_tracing();
    let group_port = backend::dead_port().await?;
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")));
        f.allow_domains = vec!["app.example.com".into()];
        f.groups.push(tcp_group("web", group_port.port(), Policy::RoundRobin));
    })
    .await?;
    let vhost = server.handle.vhost_addr().unwrap_or_else(|| panic!("a vhost port"));
    let echo = backend::echo().await?;
    let (first_site, second_site) = (http_tagged("first").await?, http_tagged("second").await?);

    let mut config = server.client_config("first");
    config.services =
        vec![tcp_service("echo", echo, 0), app("site", first_site), member("web-1", echo, "web", 1, None)];
    let mut first = TestClient::start(config).await?;
    let port = first.port_of("echo").await?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port)), 4096, 1).await?;
    let (status, body) = app_status(vhost).await?;
    ensure!(status == 200 && body.contains("first"), "{status} {body}");
    backend::assert_echo(group_port, 4096, 2).await?;

    // The host name is the first session's: another client is refused it, with the route.
    let mut config = server.client_config("second");
    config.services = vec![app("site", second_site)];
    let mut second = TestClient::start(config).await?;
    let status = second.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = status else { anyhow::bail!("not connected") };
    ensure!(services[0].outcome == RegisterOutcome::HostTaken("app.example.com".into()), "{services:?}");
    second.stop().await?;

    // The first session ends: everything it published goes with it.
    first.stop().await?;
    eventually("the first session to end", || server.handle.clients().is_empty()).await?;
    backend::refused(port).await?;
    let (status, _) = app_status(vhost).await?;
    ensure!(status == 404, "the host name is still routed: {status}");
    let backends = server.handle.groups().into_iter().find(|g| g.name == "web").map(|g| g.backends.len());
    ensure!(backends == Some(0), "the group still has the first session's backend: {backends:?}");

    // And the host name can be claimed again.
    let mut config = server.client_config("third");
    config.services = vec![app("site", second_site)];
    let mut third = TestClient::start(config).await?;
    ensure!(third.port_of("site").await? == vhost.port());
    let (status, body) = app_status(vhost).await?;
    ensure!(status == 200 && body.contains("second"), "{status} {body}");
    Ok(())
}
