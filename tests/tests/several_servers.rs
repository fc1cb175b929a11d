//! One client, several servers (issue 17): every server publishes the client's services
//! (`mode = "all"`) and users keep working while one is down; a failover list moves to the
//! next server and back after its hold; the client's SOCKS5 proxy spreads over the servers
//! (`egress = "balanced"`) and loses nothing when one stops; each server has its own trust and
//! token, and one that refuses the client leaves the others working.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use wmproxy_client::ClientStatus;
use wmproxy_config::{EgressChoice, HttpRoute, ProxyType, ServerTrust, ServersMode};
use wmproxy_tests::backend::{self, assert_echo};
use wmproxy_tests::proxy::{connect_request, curl, http_tagged};
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service, udp};

/// A server whose public ports and vhost listen on `127.0.0.<last>`, so that every server of a
/// test can publish the same port number; its egress may dial 127.0.0.1.
async fn server_on(last: u8) -> Result<TestServer> {
    let ip = IpAddr::from([127, 0, 0, last]);
    TestServer::start(|f| {
        f.public_bind = ip;
        f.vhost.http_bind = Some(SocketAddr::new(ip, 0));
        f.allow_domains = vec!["*.example.com".into()];
        f.egress.allow = vec![ipnet::IpNet::from(IpAddr::from([127, 0, 0, 1]))];
    })
    .await
}

fn at(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, last], port))
}

fn connected(s: &ClientStatus) -> bool {
    matches!(s, ClientStatus::Connected { .. })
}

fn connected_to(server: &TestServer) -> impl Fn(&ClientStatus) -> bool {
    let addr = server.addr.to_string();
    move |s| matches!(s, ClientStatus::Connected { server, .. } if *server == addr)
}

/// What users of each server do: a TCP echo, a UDP echo and an HTTP request by host name.
async fn users_reach(last: u8, (tcp, udp_port): (u16, u16), vhost: SocketAddr, seed: u64) -> Result<()> {
    assert_echo(at(last, tcp), 1024, seed).await.with_context(|| format!("TCP through 127.0.0.{last}"))?;
    let user = udp::user().await?;
    udp::round_trip(&user, at(last, udp_port), format!("ping {seed}").as_bytes(), |_| Ok(()))
        .await
        .with_context(|| format!("UDP through 127.0.0.{last}"))?;
    let page = curl(&["-sS", "-H", "Host: app.example.com", &format!("http://{vhost}/{seed}")]).await?;
    ensure!(String::from_utf8_lossy(&page).starts_with("home /"), "vhost through 127.0.0.{last}: {page:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_publishes_and_users_keep_working_while_one_is_down() -> Result<()> {
    init_tracing();
    let (echo, uecho, web) = (backend::echo().await?, udp::echo().await?, http_tagged("home").await?);
    let (tcp_port, udp_port) = (backend::fixed_port().await?, backend::fixed_port().await?);
    let mut servers = [server_on(2).await?, server_on(3).await?, server_on(4).await?];
    let vhosts: Vec<SocketAddr> = servers.iter().map(|s| s.handle.vhost_addr().unwrap()).collect();

    let mut config = servers[0].client_config("home");
    config.servers = servers.iter().map(TestServer::entry).collect();
    config.mode = ServersMode::All;
    let route = HttpRoute { custom_domains: vec!["app.example.com".into()], ..HttpRoute::default() };
    config.services = vec![
        tcp_service("ssh", echo, tcp_port),
        udp::service("dns", uecho, udp_port),
        wmproxy_tests::http_service("app", web, route),
    ];
    let mut client = TestClient::start(config).await?;
    for i in 0..3 {
        client.wait_for_tunnel(i, "every tunnel up", connected).await?;
    }
    for (i, vhost) in vhosts.iter().enumerate() {
        users_reach(2 + i as u8, (tcp_port, udp_port), *vhost, i as u64).await?;
    }

    // Users of the second and third servers, in a loop, while the first is stopped and
    // started again.
    let (done, rounds, failures) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let users = {
        let (done, rounds, failures, vhosts) = (done.clone(), rounds.clone(), failures.clone(), vhosts.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            for round in 0..100_000u64 {
                if done.load(Ordering::Relaxed) || started.elapsed() > wmproxy_tests::DEADLINE * 2 {
                    break;
                }
                let i = 1 + (round % 2) as usize;
                if let Err(e) = users_reach(2 + i as u8, (tcp_port, udp_port), vhosts[i], 100 + round).await {
                    eprintln!("round {round} failed: {e:#}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    servers[0].stop().await?;
    client.wait_for_tunnel(0, "the first tunnel lost", |s| matches!(s, ClientStatus::Connecting { .. })).await?;
    let before = rounds.load(Ordering::Relaxed);
    wmproxy_tests::eventually("users served while the first server is down", || {
        rounds.load(Ordering::Relaxed) >= before + 20
    })
    .await?;

    // Started again: the client republishes within the backoff step it is waiting out, or,
    // when an attempt is under way, within QUIC's next retransmission of its handshake (the
    // first after about 1 s: the attempt itself runs for up to 10 s before it counts as failed).
    let attempt = match &*client.statuses[0].borrow() {
        ClientStatus::Connecting { attempt, .. } => *attempt,
        other => anyhow::bail!("still connected to a stopped server? {other:?}"),
    };
    let step = (wmproxy_client::backoff::INITIAL * 2u32.saturating_pow(attempt)).min(wmproxy_client::backoff::MAX);
    let within = step.mul_f64(1.25) + Duration::from_secs(2);
    let restarted = Instant::now();
    servers[0].restart().await?;
    client.wait_for_tunnel(0, "the first tunnel back", connected).await?;
    let back_in = restarted.elapsed();
    users_reach(2, (tcp_port, udp_port), servers[0].handle.vhost_addr().unwrap(), 7).await?;
    done.store(true, Ordering::Relaxed);
    users.await?;
    let (rounds, failures) = (rounds.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    eprintln!(
        "{rounds} rounds of users on the other servers, {failures} failed; republished {back_in:?} after the restart \
         (attempt {attempt}, bound {within:?})"
    );
    ensure!(failures == 0, "{failures} of {rounds} rounds failed on the servers that stayed up");
    ensure!(back_in <= within, "republished after {back_in:?}, beyond a backoff step and a handshake retransmission");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_to_the_next_server_and_back_after_the_hold() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let port = backend::fixed_port().await?;
    let (mut first, second) = (server_on(2).await?, server_on(3).await?);
    let mut config = first.client_config("home");
    config.servers = vec![first.entry(), second.entry()];
    config.mode = ServersMode::Failover;
    config.limits.failback_after_secs = 1;
    config.services = vec![tcp_service("ssh", echo, port)];
    let mut client = TestClient::start(config).await?;
    client.wait_for("on the first server", connected_to(&first)).await?;
    assert_echo(at(2, port), 512, 1).await?;
    ensure!(TcpStream::connect(at(3, port)).await.is_err(), "the second server publishes too");

    // The preferred server goes away: the service is on the second within 3 s.
    first.stop().await?;
    let stopped = Instant::now();
    wmproxy_tests::eventually_async("the service on the second server", async || {
        Ok(assert_echo(at(3, port), 512, 2).await.is_ok())
    })
    .await?;
    let moved_in = stopped.elapsed();
    ensure!(moved_in < Duration::from_secs(3), "reachable on the second server after {moved_in:?}");

    // A user connected through the second server while the first comes back.
    let mut in_flight = TcpStream::connect(at(3, port)).await?;
    in_flight.write_all(b"before").await?;
    let mut buf = [0u8; 6];
    in_flight.read_exact(&mut buf).await?;
    first.restart().await?;
    let restarted = Instant::now();
    client.wait_for("back on the first server", connected_to(&first)).await?;
    let back_in = restarted.elapsed();
    ensure!(back_in >= Duration::from_secs(1), "moved back after {back_in:?}, within the 1 s hold");
    assert_echo(at(2, port), 512, 3).await?;
    // The connection in flight on the second server finishes there.
    in_flight.write_all(b"after!").await?;
    in_flight.read_exact(&mut buf).await?;
    ensure!(&buf == b"after!", "the in-flight connection: {buf:?}");
    drop(in_flight);
    // Then the second server no longer publishes the service, and the client leaves it.
    backend_refused(at(3, port)).await?;
    wmproxy_tests::eventually("the client gone from the second server", || second.handle.clients().is_empty()).await?;
    eprintln!("on the second server {moved_in:?} after the first stopped; back {back_in:?} after it restarted");
    Ok(())
}

/// Polls until a connection to `addr` is refused, within the test deadline.
async fn backend_refused(addr: SocketAddr) -> Result<()> {
    wmproxy_tests::eventually_async("the port closed", async || Ok(TcpStream::connect(addr).await.is_err())).await
}

/// One connection through the SOCKS5 proxy at `proxy` to the echo at `target`: 16 bytes there
/// and back.
async fn through_socks(proxy: SocketAddr, target: SocketAddr, seed: u8) -> Result<()> {
    let mut s = TcpStream::connect(proxy).await?;
    let IpAddr::V4(ip) = target.ip() else { anyhow::bail!("IPv4 only") };
    // The greeting and the request together; the answers are the method, then the reply.
    s.write_all(&connect_request(1, 1, &ip.octets(), target.port())).await?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await?;
    ensure!(reply[..2] == [5, 0] && reply[3] == 0, "SOCKS5 refused: {reply:?}");
    let msg = [seed; 16];
    s.write_all(&msg).await?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await?;
    ensure!(back == msg, "echo altered");
    Ok(())
}

/// The client's connections that left from `server` (its `/status`).
async fn egress_count(server: &TestServer) -> Result<u64> {
    let (code, body) = server.control("GET", "/status", "").await?;
    ensure!(code == 200, "{code} {body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    Ok(status["clients"][0]["egress_connections"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_socks5_proxy_spreads_and_loses_nothing_when_a_server_stops() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let (mut one, two) = (server_on(2).await?, server_on(3).await?);
    let mut config = one.client_config("home");
    config.servers = vec![one.entry(), two.entry()];
    config.egress = EgressChoice::Balanced;
    config.proxies.push(wmproxy_tests::proxy::proxy(ProxyType::Socks5, None));
    let mut client = TestClient::start(config).await?;
    for i in 0..2 {
        client.wait_for_tunnel(i, "both tunnels up", connected).await?;
    }
    let proxy = client.forward_addrs[0];
    for i in 0..40u8 {
        through_socks(proxy, echo, i).await?;
    }
    let (a, b) = (egress_count(&one).await?, egress_count(&two).await?);
    ensure!(a + b == 40 && a >= 10 && b >= 10, "40 connections spread {a} / {b}");

    // 200 in a loop, while the first server is stopped once 100 are done: the stop runs
    // beside the loop, so connections start while that server drains and closes.
    let done = Arc::new(AtomicUsize::new(0));
    let users = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut failed = Vec::new();
            for i in 0..200u8 {
                if let Err(e) = through_socks(proxy, echo, i).await {
                    failed.push(format!("{i}: {e:#}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failed
        })
    };
    wmproxy_tests::eventually("100 connections done", || done.load(Ordering::Relaxed) >= 100).await?;
    one.stop().await?;
    let failed = users.await?;
    let after = egress_count(&two).await?;
    eprintln!(
        "spread {a} / {b}; 200 more with a server stopped after 100: {} failed; the second carried {}",
        failed.len(),
        after - b
    );
    ensure!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    ensure!(after - b >= 100, "the second server carried {} of the last 100", after - b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_has_its_own_token_and_trust_and_one_refusing_leaves_the_others() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let port = backend::fixed_port().await?;
    let own_token = "the-third-servers-own-token";
    let servers = [
        server_on(2).await?,
        server_on(3).await?,
        TestServer::start(|f| {
            f.public_bind = IpAddr::from([127, 0, 0, 4]);
            f.token = Some(wmproxy_config::Secret::new(own_token));
        })
        .await?,
    ];
    let mut config = servers[0].client_config("home");
    config.servers = servers.iter().map(TestServer::entry).collect();
    config.servers[2].token = wmproxy_config::Secret::new(own_token);
    // The second server's entry pins another certificate.
    config.servers[1].trust = ServerTrust::Fingerprint([0x11; 32]);
    config.services = vec![tcp_service("ssh", echo, port)];
    let mut client = TestClient::start(config).await?;
    client.wait_for_tunnel(0, "the first tunnel", connected).await?;
    client.wait_for_tunnel(2, "the third, with its own token", connected).await?;
    let refused = client
        .wait_for_tunnel(1, "the second refused", |s| matches!(s, ClientStatus::Stopped { error: Some(_) }))
        .await?;
    let ClientStatus::Stopped { error: Some(error) } = &refused else { unreachable!() };
    let named = servers[1].addr.to_string();
    ensure!(error.contains(&named) && error.contains("certificate"), "the error names the server: {error}");
    assert_echo(at(2, port), 512, 1).await?;
    assert_echo(at(4, port), 512, 2).await?;
    ensure!(TcpStream::connect(at(3, port)).await.is_err(), "the untrusted server publishes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_test_bed_three_public_hosts_serve_a_client_behind_a_nat() -> Result<()> {
    init_tracing();
    use wmproxy_tests::netbed::{self, EXTRA_PUBLIC, Mapping, PUBLIC};
    let Some((_bed, publics, home)) = netbed::publics_or_skip(Mapping::PortPreserving, 2)? else { return Ok(()) };
    let ips = [PUBLIC, EXTRA_PUBLIC[0], EXTRA_PUBLIC[1]];
    let mut servers = Vec::new();
    for (public, ip) in publics.iter().zip(ips) {
        servers.push(netbed::server_at(public, ip, |_| {}).await?);
    }
    let echo = home.run(backend::echo()).await??;
    let port = backend::fixed_port().await?;
    let mut config = servers[0].client_config("home");
    config.servers = servers.iter().map(TestServer::entry).collect();
    config.services = vec![tcp_service("ssh", echo, port)];
    let mut client = home.run(TestClient::start(config)).await??;
    for i in 0..3 {
        client.wait_for_tunnel(i, "every tunnel up", connected).await?;
    }
    // Users on the public side reach the home's echo through each server.
    let user = &publics[0];
    let echo_via = |ip: std::net::Ipv4Addr, seed: u64| user.run(assert_echo(SocketAddr::from((ip, port)), 4096, seed));
    for (i, ip) in ips.iter().enumerate() {
        echo_via(*ip, i as u64).await??;
    }
    // The second server stops: the other two serve every user meanwhile.
    let mut second = servers.remove(1);
    second.stop().await?;
    client.wait_for_tunnel(1, "the second tunnel lost", |s| matches!(s, ClientStatus::Connecting { .. })).await?;
    for round in 0..40u64 {
        let ip = if round % 2 == 0 { ips[0] } else { ips[2] };
        echo_via(ip, 100 + round).await?.with_context(|| format!("round {round} through {ip}"))?;
    }
    // Started again on its host: the client is back on it.
    let second = publics[1]
        .run(async move {
            second.restart().await?;
            Ok::<_, anyhow::Error>(second)
        })
        .await??;
    client.wait_for_tunnel(1, "the second tunnel back", connected).await?;
    echo_via(ips[1], 7).await??;
    let status: serde_json::Value =
        serde_json::from_str(&publics[1].get(second.handle.control_addr().unwrap(), "/status").await?)?;
    ensure!(status["clients"][0]["servers"] == 3, "the server sees a client of three servers: {status}");
    ensure!(
        status["clients"][0]["address"].as_str().is_some_and(|a| a.starts_with("198.18.0.2:")),
        "from behind the NAT: {status}"
    );
    drop(client);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_test_bed_a_balanced_proxy_loses_nothing_when_a_server_host_dies() -> Result<()> {
    init_tracing();
    use wmproxy_tests::netbed::{self, EXTRA_PUBLIC, Mapping, PUBLIC};
    let Some((bed, publics, home)) = netbed::publics_or_skip(Mapping::PortPreserving, 2)? else { return Ok(()) };
    // Two servers; the target is a third host, which both may dial.
    let target_host = EXTRA_PUBLIC[1];
    let allow = move |f: &mut wmproxy_config::server::ServerFile| {
        f.egress.allow = vec![ipnet::IpNet::from(IpAddr::from(target_host))];
    };
    let servers = [
        netbed::server_at(&publics[0], PUBLIC, allow).await?,
        netbed::server_at(&publics[1], EXTRA_PUBLIC[0], allow).await?,
    ];
    let echo = publics[2].run(backend::echo_on(target_host.into())).await??;
    let mut config = servers[0].client_config("home");
    config.servers = servers.iter().map(TestServer::entry).collect();
    config.egress = EgressChoice::Balanced;
    config.proxies.push(wmproxy_tests::proxy::proxy(ProxyType::Socks5, None));
    let mut client = home.run(TestClient::start(config)).await??;
    for i in 0..2 {
        client.wait_for_tunnel(i, "both tunnels up", connected).await?;
    }
    let proxy = client.forward_addrs[0];
    // 200 connections from the home host through the proxy, one after another; the second
    // server's host is cut off (no close, no reset: its tunnel just goes silent) after 100,
    // between two connections: one in flight through a host that vanishes is lost whatever
    // the client does (README, "Several servers"); what must hold is that no new one is.
    let done = Arc::new(AtomicUsize::new(0));
    let (cut_done, cut) = tokio::sync::oneshot::channel::<()>();
    let users = {
        let done = done.clone();
        home.run(async move {
            let mut failed = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut cut = Some(cut);
            for i in 0..200u8 {
                if i == 100
                    && let Some(cut) = cut.take()
                {
                    let _ = cut.await;
                }
                let started = Instant::now();
                if let Err(e) = through_socks(proxy, echo, i).await {
                    failed.push(format!("{i}: {e:#}"));
                }
                slowest = slowest.max(started.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failed, slowest)
        })
    };
    wmproxy_tests::eventually("100 connections done", || done.load(Ordering::Relaxed) >= 100).await?;
    bed.cut_public(1, true)?;
    let _ = cut_done.send(());
    let (failed, slowest) = users.await?;
    let first = egress_count_at(&publics[0], &servers[0]).await?;
    eprintln!(
        "200 through a balanced proxy, a server host cut after 100: {} failed, slowest {slowest:?}; the first server carried {first}",
        failed.len()
    );
    ensure!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    ensure!(first >= 140, "the first server carried {first} of 200 (the second was cut off after 100)");
    Ok(())
}

/// [`egress_count`] of a server on a test bed host, asked on that host.
async fn egress_count_at(public: &wmproxy_tests::netbed::InNetns, server: &TestServer) -> Result<u64> {
    let status: serde_json::Value =
        serde_json::from_str(&public.get(server.handle.control_addr().context("control API")?, "/status").await?)?;
    Ok(status["clients"][0]["egress_connections"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_test_bed_failover_leaves_a_server_whose_host_dies_within_3_s() -> Result<()> {
    init_tracing();
    use wmproxy_tests::netbed::{self, EXTRA_PUBLIC, Mapping, PUBLIC};
    let Some((bed, publics, home)) = netbed::publics_or_skip(Mapping::PortPreserving, 2)? else { return Ok(()) };
    let servers = [
        netbed::server_at(&publics[0], PUBLIC, |_| {}).await?,
        netbed::server_at(&publics[1], EXTRA_PUBLIC[0], |_| {}).await?,
    ];
    let echo = home.run(backend::echo()).await??;
    let port = backend::fixed_port().await?;
    let mut config = servers[0].client_config("home");
    config.servers = servers.iter().map(TestServer::entry).collect();
    config.mode = ServersMode::Failover;
    config.services = vec![tcp_service("ssh", echo, port)];
    let mut client = home.run(TestClient::start(config)).await??;
    client.wait_for("on the first server", connected_to(&servers[0])).await?;
    // Users on a third public host.
    let user = &publics[2];
    user.run(assert_echo(SocketAddr::from((PUBLIC, port)), 1024, 1)).await??;
    // The first server's host goes off the network: no close reaches the client.
    bed.cut_public(0, true)?;
    let cut = Instant::now();
    let second = SocketAddr::from((EXTRA_PUBLIC[0], port));
    wmproxy_tests::eventually_async("the service on the second server", async || {
        Ok(user.run(assert_echo(second, 1024, 2)).await?.is_ok())
    })
    .await?;
    let moved_in = cut.elapsed();
    eprintln!("the first server's host cut off: the service answered on the second {moved_in:?} later");
    ensure!(moved_in < Duration::from_secs(3), "reachable on the second server after {moved_in:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_every_tunnel_and_status_shows_each_server() -> Result<()> {
    init_tracing();
    let (a, b) = (backend::echo().await?, backend::echo().await?);
    let (port_a, port_b) = (backend::fixed_port().await?, backend::fixed_port().await?);
    let servers = [server_on(2).await?, server_on(3).await?];
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("client.toml");
    let mut text = format!(
        "name = \"home\"\ntoken = \"{}\"\n\n[control]\nbind = \"127.0.0.1:0\"\ntoken = \"{}\"\n",
        wmproxy_tests::TOKEN,
        wmproxy_tests::CONTROL_TOKEN
    );
    for s in &servers {
        text += &format!(
            "\n[[servers]]\naddr = \"{}\"\nserver_name = \"wmproxy\"\nserver_fingerprint = \"{}\"\n",
            s.addr, s.fingerprint
        );
    }
    let service = |name: &str, local: SocketAddr, port: u16| {
        format!("\n[[services]]\nname = \"{name}\"\nlocal_addr = \"{local}\"\nremote_port = {port}\n")
    };
    std::fs::write(&file, text.clone() + &service("a", a, port_a))?;
    let (mut client, control) = TestClient::start_from(&file).await?;
    for i in 0..2 {
        client.wait_for_tunnel(i, "both tunnels up", connected).await?;
    }
    std::fs::write(&file, text + &service("a", a, port_a) + &service("b", b, port_b))?;
    let (code, body) =
        wmproxy_tests::control_call(control, Some(wmproxy_tests::CONTROL_TOKEN), "POST", "/reload", "").await?;
    ensure!(code == 200 && body.contains("services.b"), "reload: {code} {body}");
    for i in 0..2 {
        client.wait_for_tunnel(i, "b published on every server", |s| s.port_of("b").is_some()).await?;
    }
    for last in [2, 3] {
        assert_echo(at(last, port_a), 256, 1).await?;
        assert_echo(at(last, port_b), 256, 2).await?;
    }
    let (_, status) =
        wmproxy_tests::control_call(control, Some(wmproxy_tests::CONTROL_TOKEN), "GET", "/status", "").await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let tunnels = status["servers"].as_array().context("servers")?;
    ensure!(tunnels.len() == 2, "{status}");
    for (tunnel, server) in tunnels.iter().zip(&servers) {
        ensure!(tunnel["server"] == server.addr.to_string() && tunnel["state"] == "connected", "{tunnel}");
        ensure!(tunnel["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{tunnel}");
        ensure!(tunnel["services"].as_array().is_some_and(|s| s.len() == 2), "{tunnel}");
    }
    let (_, metrics) =
        wmproxy_tests::control_call(control, Some(wmproxy_tests::CONTROL_TOKEN), "GET", "/metrics", "").await?;
    for s in &servers {
        let line = format!("wmproxy_client_server_tunnel_up{{server=\"{}\"}} 1", s.addr);
        ensure!(metrics.contains(&line), "no `{line}` in the metrics");
    }
    Ok(())
}
