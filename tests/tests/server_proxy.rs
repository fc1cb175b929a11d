//! The server's proxies, egress at a client (`via`): curl through SOCKS5 and HTTP reaches a host
//! only the client can reach, under the client's egress policy.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{Result, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_config::ProxyType;
use wmproxy_config::proxy::{ServerProxyFields, ServerProxyFile};
use wmproxy_tests::backend::{checksum, pattern};
use wmproxy_tests::proxy::{connect_request, curl, file_server, raw_exchange, reply_code};
use wmproxy_tests::{TestClient, TestServer, init_tracing};

fn proxy_fields(via: &str) -> ServerProxyFields {
    ServerProxyFields {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        username: None,
        password: None,
        handshake_timeout_secs: 1,
        via: toml::Spanned::new(0..0, via.into()),
    }
}

fn of_kind(kind: ProxyType, fields: ServerProxyFields) -> ServerProxyFile {
    match kind {
        ProxyType::Socks5 => ServerProxyFile::Socks5(fields),
        ProxyType::Http => ServerProxyFile::Http(fields),
    }
}

fn server_proxy(kind: ProxyType, via: &str) -> ServerProxyFile {
    of_kind(kind, proxy_fields(via))
}

/// A server with a SOCKS5 and an HTTP proxy via client `office`; returns it and their addresses.
async fn server() -> Result<(TestServer, SocketAddr, SocketAddr)> {
    let server = TestServer::start(|f| {
        f.proxies = vec![server_proxy(ProxyType::Socks5, "office"), server_proxy(ProxyType::Http, "office")];
    })
    .await?;
    let addrs = server.handle.proxy_addrs();
    Ok((server, addrs[0], addrs[1]))
}

async fn office(server: &TestServer, allow_loopback: bool) -> Result<TestClient> {
    let mut config = server.client_config("office");
    if allow_loopback {
        config.server_proxies_egress = wmproxy_config::EgressPolicy::client(wmproxy_config::egress::EgressFile {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        });
    }
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_clients_network_through_the_servers_proxies() -> Result<()> {
    init_tracing();
    let body = pattern(10 * 1024 * 1024, 9);
    let (intranet, _) = file_server(body.clone()).await?;
    let url = format!("http://localhost:{}/file", intranet.port());
    let (server, socks, http) = server().await?;
    let _office = office(&server, true).await?;
    for args in [
        vec!["--socks5-hostname".to_owned(), socks.to_string(), url.clone()],
        vec!["--proxy".to_owned(), format!("http://{http}"), url.clone()],
        vec!["--proxytunnel".to_owned(), "--proxy".to_owned(), format!("http://{http}"), url.clone()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = curl(&args).await?;
        ensure!(got.len() == body.len() && checksum(&got) == checksum(&body), "{args:?}: body altered");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_egress_policy_decides_and_a_missing_client_is_unreachable() -> Result<()> {
    init_tracing();
    let (intranet, accepted) = file_server(b"private".to_vec()).await?;
    let (server, socks, _http) = server().await?;
    // No client yet: "network unreachable".
    let answer = raw_exchange(socks, &connect_request(1, 1, &[127, 0, 0, 1], intranet.port())).await?;
    ensure!(reply_code(&answer[2..]) == Some(3), "no client: {answer:?}");
    // The client's default policy denies loopback.
    let _office = office(&server, false).await?;
    let answer = raw_exchange(socks, &connect_request(1, 1, &[127, 0, 0, 1], intranet.port())).await?;
    ensure!(reply_code(&answer[2..]) == Some(2), "denied at the client: {answer:?}");
    ensure!(accepted.load(Ordering::Relaxed) == 0, "the denied target saw a connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_udp_associate_and_a_group_as_via() -> Result<()> {
    init_tracing();
    let (intranet, _) = file_server(b"inside".to_vec()).await?;
    let dns = wmproxy_tests::udp::echo().await?;
    let group_port = wmproxy_tests::backend::dead_port().await?;
    let server = TestServer::start(|f| {
        let mut locked = proxy_fields("office");
        locked.username = Some("eve".into());
        locked.password = Some(wmproxy_config::Secret::new("pa55-word"));
        f.proxies = vec![of_kind(ProxyType::Socks5, locked), server_proxy(ProxyType::Socks5, "branches")];
        f.groups.push(wmproxy_tests::groups::tcp_group(
            "branches",
            group_port.port(),
            wmproxy_config::Policy::RoundRobin,
        ));
    })
    .await?;
    let (locked, by_group) = (server.handle.proxy_addrs()[0], server.handle.proxy_addrs()[1]);
    let _office = office(&server, true).await?;
    let url = format!("http://127.0.0.1:{}/", intranet.port());

    ensure!(curl(&["--proxy", &format!("socks5h://eve:pa55-word@{locked}"), &url]).await? == b"inside");
    ensure!(curl(&["--proxy", &format!("socks5h://eve:wrong@{locked}"), &url]).await.is_err());

    // A branch client joins the group `branches`; the proxy via the group leaves from it.
    let mut branch = server.client_config("branch-1");
    branch.server_proxies_egress = wmproxy_config::EgressPolicy::client(wmproxy_config::egress::EgressFile {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    });
    let web = wmproxy_tests::groups::tagged("b1").await?;
    branch.services.push(wmproxy_tests::groups::member("b1", web.addr, "branches", 1, None));
    let mut branch = TestClient::start(branch).await?;
    branch.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    ensure!(curl(&["--socks5-hostname", &by_group.to_string(), &url]).await? == b"inside");

    // UDP ASSOCIATE on a server proxy: the flow leaves from the branch client.
    let (_control, relay) = wmproxy_tests::proxy::udp_associate(by_group).await?;
    let user = wmproxy_tests::udp::user().await?;
    let query = wmproxy_tests::proxy::socks_udp(0, dns, b"\x00\x01 A? intranet.example");
    let answer = wmproxy_tests::udp::request(&user, relay, &query).await?;
    ensure!(answer == query, "answer: {answer:?}");
    ensure!(branch.udp.snapshot().active_flows == 1, "the flow's socket is on the branch client");
    Ok(())
}
