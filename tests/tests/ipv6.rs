//! The server's default addresses take both IP versions (issue 18): a client reaches the
//! tunnel over IPv6 (`::1`), and users reach its TCP and UDP services over IPv6 and IPv4 on one
//! dual-stack port; an IPv4 peer is shown as IPv4, not as `::ffff:a.b.c.d`.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Result, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_config::ServerFile;
use wmproxy_tests::backend::{self, assert_echo};
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service, udp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_addresses_serve_ipv6_and_ipv4_users_on_one_port() -> Result<()> {
    init_tracing();
    let defaults = ServerFile::default();
    ensure!(defaults.bind.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED), "default bind {}", defaults.bind);
    ensure!(defaults.public_bind == IpAddr::V6(Ipv6Addr::UNSPECIFIED), "default public_bind {}", defaults.public_bind);
    let server = TestServer::start(move |f| {
        f.bind = SocketAddr::new(defaults.bind.ip(), 0);
        f.public_bind = defaults.public_bind;
        f.tcp_bind = None;
    })
    .await?;
    let (echo, uecho) = (backend::echo().await?, udp::echo().await?);
    let (tcp_port, udp_port) = (backend::fixed_port().await?, backend::fixed_port().await?);
    let mut config = server.client_config("home");
    let v6 = |addr: SocketAddr| SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())).to_string();
    config.servers[0].addr = v6(server.addr);
    config.servers[0].tcp_addr = v6(server.tcp_addr);
    config.services = vec![tcp_service("ssh", echo, tcp_port), udp::service("dns", uecho, udp_port)];
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected over IPv6", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let address = status["clients"][0]["address"].as_str().unwrap_or_default().to_owned();
    ensure!(address.starts_with("[::1]:"), "the tunnel's client address: {address}");

    for ip in [IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::LOCALHOST)] {
        assert_echo(SocketAddr::new(ip, tcp_port), 2048, 1).await?;
        let user = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        udp::round_trip(&user, SocketAddr::new(ip, udp_port), b"over both versions", |_| Ok(())).await?;
    }

    // A client over IPv4 on the dual-stack endpoint is shown as 127.0.0.1, not as
    // ::ffff:127.0.0.1.
    let mut v4_config = server.client_config("office");
    v4_config.servers[0].addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.addr.port())).to_string();
    let mut v4_client = TestClient::start(v4_config).await?;
    v4_client.wait_for("connected over IPv4", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let office = status["clients"].as_array().into_iter().flatten().find(|c| c["name"] == "office");
    let address = office.and_then(|c| c["address"].as_str()).unwrap_or_default();
    ensure!(address.starts_with("127.0.0.1:"), "the IPv4 client's address: {address} in {status}");
    Ok(())
}
