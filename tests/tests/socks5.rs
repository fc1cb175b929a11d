//! The client's SOCKS5 proxy, egress at the server: curl downloads through it, credentials,
//! malformed input, denied targets and a slowloris greeting.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{Result, ensure};
use tokio::io::AsyncWriteExt;
use wmproxy_config::ProxyType;
use wmproxy_tests::backend::{checksum, pattern};
use wmproxy_tests::proxy::{connect_request, curl, file_server, raw_exchange, reply_code};
use wmproxy_tests::{TestClient, TestServer, init_tracing};

async fn setup(
    allow_loopback: bool,
    credentials: Option<(&str, &str)>,
) -> Result<(TestServer, TestClient, SocketAddr)> {
    wmproxy_tests::proxy::setup(ProxyType::Socks5, allow_loopback, credentials).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_10_mib_through_the_socks5_proxy_with_and_without_credentials() -> Result<()> {
    init_tracing();
    let body = pattern(10 * 1024 * 1024, 42);
    let (web, _) = file_server(body.clone()).await?;
    let url = format!("http://localhost:{}/file", web.port());

    let (_s, _c, open) = setup(true, None).await?;
    let got = curl(&["--socks5-hostname", &open.to_string(), &url]).await?;
    ensure!(checksum(&got) == checksum(&body) && got.len() == body.len(), "body altered without auth");

    let (_s2, _c2, locked) = setup(true, Some(("alice", "s3cret-pass"))).await?;
    let proxy_url = format!("socks5h://alice:s3cret-pass@{locked}");
    let got = curl(&["--proxy", &proxy_url, &url]).await?;
    ensure!(checksum(&got) == checksum(&body) && got.len() == body.len(), "body altered with auth");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_refused_before_any_dial() -> Result<()> {
    init_tracing();
    let (web, accepted) = file_server(b"secret".to_vec()).await?;
    let (_s, _c, proxy) = setup(true, Some(("alice", "s3cret-pass"))).await?;
    let url = format!("http://127.0.0.1:{}/", web.port());

    // Offering no-auth only: method 0xFF.
    let answer = raw_exchange(proxy, &[5, 1, 0]).await?;
    ensure!(answer == [5, 0xff], "no acceptable method: {answer:?}");
    // A wrong password: RFC 1929 failure status.
    let mut attempt = vec![5, 1, 2, 1, 5];
    attempt.extend_from_slice(b"alice");
    attempt.push(5);
    attempt.extend_from_slice(b"wrong");
    let answer = raw_exchange(proxy, &attempt).await?;
    ensure!(answer.len() == 4 && answer[..2] == [5, 2] && answer[3] != 0, "auth failure: {answer:?}");
    ensure!(curl(&["--proxy", &format!("socks5h://alice:wrong@{proxy}"), &url]).await.is_err());
    ensure!(accepted.load(Ordering::Relaxed) == 0, "the target saw a connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socks5_input_gets_a_reply_code_or_a_clean_close() -> Result<()> {
    init_tracing();
    let (_s, _c, proxy) = setup(true, None).await?;
    // SOCKS version 4: closed without a SOCKS5 reply.
    ensure!(raw_exchange(proxy, &[4, 1, 0, 80, 127, 0, 0, 1, 0]).await?.is_empty());
    // No methods at all: no acceptable method.
    ensure!(raw_exchange(proxy, &[5, 0]).await? == [5, 0xff]);
    // Address type 9: "address type not supported".
    let answer = raw_exchange(proxy, &connect_request(1, 9, &[1, 2, 3, 4], 80)).await?;
    ensure!(reply_code(&answer[2..]) == Some(8), "bad atyp: {answer:?}");
    // A domain of length 0.
    let answer = raw_exchange(proxy, &connect_request(1, 3, &[0], 80)).await?;
    ensure!(reply_code(&answer[2..]) == Some(8), "empty domain: {answer:?}");
    // BIND: "command not supported".
    let answer = raw_exchange(proxy, &connect_request(2, 1, &[127, 0, 0, 1], 80)).await?;
    ensure!(reply_code(&answer[2..]) == Some(7), "bind: {answer:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_targets_get_reply_2_and_nothing_reaches_them() -> Result<()> {
    init_tracing();
    let (web, accepted) = file_server(b"nope".to_vec()).await?;
    let (_s, _c, proxy) = setup(false, None).await?; // default egress: loopback denied
    let port = web.port();
    let mut v4_mapped = [0u8; 16];
    v4_mapped[10] = 0xff;
    v4_mapped[11] = 0xff;
    v4_mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
    let mut localhost = vec![9];
    localhost.extend_from_slice(b"localhost");
    for (what, atyp, addr, p) in [
        ("127.0.0.1", 1, vec![127, 0, 0, 1], port),
        ("localhost", 3, localhost, port),
        ("::ffff:127.0.0.1", 4, v4_mapped.to_vec(), port),
        ("169.254.169.254", 1, vec![169, 254, 169, 254], 80),
    ] {
        let answer = raw_exchange(proxy, &connect_request(1, atyp, &addr, p)).await?;
        ensure!(reply_code(&answer[2..]) == Some(2), "{what}: {answer:?}");
    }
    ensure!(accepted.load(Ordering::Relaxed) == 0, "a denied target saw a connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_greeting_is_closed_at_its_deadline_while_others_are_served() -> Result<()> {
    init_tracing();
    let (web, _) = file_server(b"hello".to_vec()).await?;
    let (_s, _c, proxy) = setup(true, None).await?;
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(proxy).await?;
    slow.write_all(&[5]).await?; // half a greeting, then silence
    let got = curl(&["--socks5-hostname", &proxy.to_string(), &format!("http://127.0.0.1:{}/", web.port())]).await?;
    ensure!(got == b"hello" && started.elapsed() < std::time::Duration::from_secs(1), "served at once");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(wmproxy_tests::DEADLINE, tokio::io::AsyncReadExt::read(&mut slow, &mut buf)).await??;
    let took = started.elapsed();
    ensure!(n == 0, "closed without a reply");
    ensure!(took >= std::time::Duration::from_millis(900), "closed at the 1 s deadline, not before: {took:?}");
    println!("slowloris closed after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_domain_and_port_rules_apply_before_any_lookup_or_dial() -> Result<()> {
    init_tracing();
    let (web, accepted) = file_server(b"ok".to_vec()).await?;
    let (other, other_accepted) = file_server(b"other".to_vec()).await?;
    let server = TestServer::start(|f| {
        f.egress.allow = vec!["127.0.0.1/32".parse().unwrap()];
        f.egress.deny_domains = vec!["localhost".into()];
        f.egress.deny_ports = vec![other.port().to_string().parse().unwrap()];
    })
    .await?;
    let mut config = server.client_config("home");
    config.proxies.push(wmproxy_tests::proxy::proxy(ProxyType::Socks5, None));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let proxy = client.forward_addrs[0];

    let mut name = vec![9];
    name.extend_from_slice(b"localhost");
    let answer = raw_exchange(proxy, &connect_request(1, 3, &name, web.port())).await?;
    ensure!(reply_code(&answer[2..]) == Some(2), "denied name: {answer:?}");
    let answer = raw_exchange(proxy, &connect_request(1, 1, &[127, 0, 0, 1], other.port())).await?;
    ensure!(reply_code(&answer[2..]) == Some(2), "denied port: {answer:?}");
    ensure!(accepted.load(Ordering::Relaxed) == 0 && other_accepted.load(Ordering::Relaxed) == 0);
    let got = curl(&["--socks5-hostname", &proxy.to_string(), &format!("http://127.0.0.1:{}/", web.port())]).await?;
    ensure!(got == b"ok", "the same target by address is allowed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_carries_a_dns_like_round_trip_and_ends_with_its_tcp_connection() -> Result<()> {
    init_tracing();
    let echo = wmproxy_tests::udp::echo().await?;
    let (_s, client, proxy) = setup(true, None).await?;
    let (control, relay) = wmproxy_tests::proxy::udp_associate(proxy).await?;
    let user = wmproxy_tests::udp::user().await?;
    let datagram = |frag: u8, payload: &[u8]| wmproxy_tests::proxy::socks_udp(frag, echo, payload);
    // A fragment is dropped; the whole datagram behind it is answered, from the echo's address.
    user.send_to(&datagram(1, b"fragment"), relay).await?;
    let query = b"\x12\x34 A? example.com";
    let answer = wmproxy_tests::udp::request(&user, relay, &datagram(0, query)).await?;
    ensure!(answer == datagram(0, query), "reply: {answer:?}");
    // Another source address (a second socket) is not the associated user.
    let stranger = wmproxy_tests::udp::user().await?;
    stranger.send_to(&datagram(0, b"from a stranger"), relay).await?;
    let answer = wmproxy_tests::udp::request(&user, relay, &datagram(0, b"again")).await?;
    ensure!(answer == datagram(0, b"again"));
    let mut buf = [0u8; 64];
    ensure!(stranger.try_recv(&mut buf).is_err(), "the stranger got an answer");

    drop(control);
    wmproxy_tests::eventually("the association's flow ends with its TCP connection", || {
        client.udp.snapshot().active_flows == 0
    })
    .await?;
    Ok(())
}
