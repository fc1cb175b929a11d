//! Load-balancing groups: retry and passive ejection, active checks (TCP and HTTP) with
//! consecutive rise/fall, the four policies, all backends down, drain, and group keys.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, ensure};
use tokio::io::AsyncReadExt;
use wmproxy_client::ClientStatus;
use wmproxy_config::Policy;
use wmproxy_server::groups::health::HealthState;
use wmproxy_tests::groups::{self, member, tagged, tcp_check, which};
use wmproxy_tests::{TestClient, TestServer, backend, eventually, eventually_async, init_tracing};
use wmproxy_wire::RegisterOutcome;

/// A server with one group `web` on a free port; returns it and the group's public address.
async fn server_with_group(
    policy: Policy,
    adjust: impl FnOnce(&mut wmproxy_config::group::PortGroupFile),
) -> Result<(TestServer, SocketAddr)> {
    let public = backend::dead_port().await?;
    let mut group = groups::group("web", public.port(), policy);
    adjust(&mut group);
    let server = TestServer::start(move |f| f.groups.push(wmproxy_config::GroupFile::Tcp(group))).await?;
    Ok((server, public))
}

/// Starts a client whose services all join `web`, and waits until it is connected.
async fn members(server: &TestServer, name: &str, services: Vec<wmproxy_config::Service>) -> Result<TestClient> {
    let mut config = server.client_config(name);
    config.services = services;
    let mut client = TestClient::start(config).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = status else { unreachable!() };
    for s in services {
        ensure!(matches!(s.outcome, RegisterOutcome::Joined { .. }), "{} not joined: {}", s.name, s.outcome);
    }
    Ok(client)
}

/// The health state of backend `service` of group `web`.
fn state_of(server: &TestServer, service: &str) -> Option<HealthState> {
    let groups = server.handle.groups();
    let web = groups.iter().find(|g| g.name == "web")?;
    web.backends.iter().find(|b| b.service == service).map(|b| b.health.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_user_connection_and_rejoins_after_rise() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let (b1, mut b2, b3) = (tagged("b1").await?, tagged("b2").await?, tagged("b3").await?);
    let check = || Some(tcp_check(50, 2, 2));
    let _a =
        members(&server, "a", vec![member("b1", b1.addr, "web", 1, check()), member("b2", b2.addr, "web", 1, check())])
            .await?;
    let _b = members(&server, "b", vec![member("b3", b3.addr, "web", 1, check())]).await?;
    for b in ["b1", "b2", "b3"] {
        eventually("every backend healthy", || state_of(&server, b) == Some(HealthState::Healthy)).await?;
    }

    let mut served: HashMap<String, usize> = HashMap::new();
    for i in 0..1000 {
        if i == 300 {
            b2.stop();
        }
        let tag = which(public).await.map_err(|e| e.context(format!("user connection {i}")))?;
        *served.entry(tag).or_default() += 1;
    }
    println!("served: {served:?}");
    ensure!(served["b2"] <= 101, "b2 got work after it died: {served:?}");
    ensure!(served["b1"] >= 400 && served["b3"] >= 400, "the survivors took over: {served:?}");

    b2.restart().await?;
    eventually("b2 healthy again after `rise` checks", || state_of(&server, "b2") == Some(HealthState::Healthy))
        .await?;
    let mut after = 0;
    for _ in 0..30 {
        after += usize::from(which(public).await? == "b2");
    }
    ensure!(after >= 5, "b2 receives work again ({after} of 30)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_never_receives_work() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let (stable, flapper) = (tagged("stable").await?, tagged("flapper").await?);
    let flapping = groups::flapping_endpoint().await?;
    let _c = members(
        &server,
        "a",
        vec![
            member("stable", stable.addr, "web", 1, None),
            member("flapper", flapper.addr, "web", 1, Some(groups::http_check(flapping, 20, 3, 3))),
        ],
    )
    .await?;
    // Keep connecting while the flapper is checked at least 30 times (up, down, up, …).
    let checks =
        || server.handle.groups()[0].backends.iter().find(|b| b.service == "flapper").map_or(0, |b| b.health.checks);
    let mut connections = 0;
    while checks() < 30 {
        ensure!(which(public).await? == "stable", "the flapper got work after {} checks", checks());
        ensure!(state_of(&server, "flapper") == Some(HealthState::Unhealthy));
        connections += 1;
    }
    println!("{connections} connections, all to the stable backend, over {} checks", checks());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_follows_the_status_with_rise_and_fall() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let web = tagged("web").await?;
    let (health, status) = groups::http_status_endpoint().await?;
    let _c = members(&server, "a", vec![member("web", web.addr, "web", 1, Some(groups::http_check(health, 20, 2, 2)))])
        .await?;
    let view = || server.handle.groups()[0].backends[0].health;
    eventually("healthy on 200", || view().state == HealthState::Healthy).await?;
    ensure!(which(public).await? == "web");

    status.store(503, std::sync::atomic::Ordering::Relaxed);
    eventually("unhealthy after `fall` 503s", || view().state == HealthState::Unhealthy).await?;
    ensure!(view().fail_streak >= 2, "{:?}", view());
    ensure!(which(public).await.is_err(), "no healthy backend: the user's connection is closed");

    status.store(200, std::sync::atomic::Ordering::Relaxed);
    eventually("healthy after `rise` 200s", || view().state == HealthState::Healthy)
        .await
        .map_err(|e| e.context(format!("{:?}", view())))?;
    ensure!(view().ok_streak >= 2);
    ensure!(which(public).await? == "web");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_shares_follow_the_weights() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::WeightedRoundRobin, |_| {}).await?;
    let (a, b, c) = (tagged("a").await?, tagged("b").await?, tagged("c").await?);
    let _x =
        members(&server, "x", vec![member("a", a.addr, "web", 5, None), member("b", b.addr, "web", 1, None)]).await?;
    let _y = members(&server, "y", vec![member("c", c.addr, "web", 1, None)]).await?;
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..7000 {
        *served.entry(which(public).await?).or_default() += 1;
    }
    println!("served: {served:?}");
    for (tag, weight) in [("a", 5.0), ("b", 1.0), ("c", 1.0)] {
        let share = served[tag] as f64 / 7000.0;
        ensure!((share - weight / 7.0).abs() < 0.03, "{tag}: share {share:.3}, weight share {:.3}", weight / 7.0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_work_to_the_idle_backend() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::LeastConnections, |_| {}).await?;
    let (busy, idle) = (tagged("busy").await?, tagged("idle").await?);
    let _x = members(&server, "x", vec![member("busy", busy.addr, "web", 1, None)]).await?;
    let mut held = Vec::new();
    for _ in 0..50 {
        let (tag, conn) = groups::which_from(public, None).await?;
        ensure!(tag == "busy");
        held.push(conn);
    }
    let _y = members(&server, "y", vec![member("idle", idle.addr, "web", 1, None)]).await?;
    for i in 0..20 {
        let (tag, conn) = groups::which_from(public, None).await?;
        ensure!(tag == "idle", "connection {i} went to {tag} while `busy` holds 50");
        held.push(conn);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sticks_and_a_departure_moves_only_its_users() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::IpHash, |_| {}).await?;
    let (a, b, c) = (tagged("a").await?, tagged("b").await?, tagged("c").await?);
    let _x =
        members(&server, "x", vec![member("a", a.addr, "web", 1, None), member("b", b.addr, "web", 1, None)]).await?;
    let mut y = members(&server, "y", vec![member("c", c.addr, "web", 1, None)]).await?;

    let user = |i: u8| IpAddr::from([127, 0, 0, 10 + i]);
    let first = groups::which_from(public, Some(user(0))).await?.0;
    for _ in 0..100 {
        ensure!(groups::which_from(public, Some(user(0))).await?.0 == first, "the same user moved");
    }
    let mut before = Vec::new();
    for i in 0..60 {
        before.push(groups::which_from(public, Some(user(i))).await?.0);
    }
    ensure!(["a", "b", "c"].iter().all(|t| before.iter().any(|b| b == t)), "users spread: {before:?}");

    y.stop().await?;
    eventually("c left the group", || server.handle.groups()[0].backends.len() == 2).await?;
    for (i, old) in before.iter().enumerate() {
        let new = groups::which_from(public, Some(user(i as u8))).await?.0;
        if old != "c" {
            ensure!(&new == old, "user {i} moved from {old} to {new} although {old} stayed");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_users_are_closed_promptly() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    // No member at all: the port is open and closes each user at once.
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(public).await?;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(wmproxy_tests::DEADLINE, stream.read(&mut buf)).await?.unwrap_or(0);
    ensure!(n == 0, "closed without data");

    // Members whose services are dead: each is tried, fails, and the user is closed.
    let (d1, d2) = (backend::dead_port().await?, backend::dead_port().await?);
    let _x = members(&server, "x", vec![member("d1", d1, "web", 1, None), member("d2", d2, "web", 1, None)]).await?;
    for _ in 0..3 {
        ensure!(which(public).await.is_err());
    }
    let took = started.elapsed();
    println!("closed in {took:?}");
    ensure!(took < std::time::Duration::from_secs(5), "within the dial timeout: {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_keeps_its_connections_and_gets_no_new_ones() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let (a, b) = (tagged("a").await?, tagged("b").await?);
    let _x =
        members(&server, "x", vec![member("a", a.addr, "web", 1, None), member("b", b.addr, "web", 1, None)]).await?;
    let (mut held, mut conn) = groups::which_from(public, None).await?;
    if held != "a" {
        (held, conn) = groups::which_from(public, None).await?;
    }
    ensure!(held == "a");
    // Through the control API, as an operator would.
    let (status, body) = server.control("POST", "/backends/x:a/drain", "").await?;
    ensure!(status == 200 && body.contains("\"drained\": true"), "{status} {body}");
    let (status, _) = server.control("POST", "/backends/x:nobody/drain", "").await?;
    ensure!(status == 404, "an unknown backend: {status}");
    for _ in 0..10 {
        ensure!(which(public).await? == "b");
    }
    // The held connection still echoes.
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"ping").await?;
    let mut back = [0u8; 4];
    conn.read_exact(&mut back).await?;
    ensure!(&back == b"ping");
    let (status, body) = server.control("POST", "/backends/x:a/undrain", "").await?;
    ensure!(status == 200, "{status} {body}");
    let mut got_a = false;
    for _ in 0..4 {
        got_a |= which(public).await? == "a";
    }
    ensure!(got_a, "undrained backend gets work again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_group_key_is_refused_while_the_other_services_register() -> Result<()> {
    init_tracing();
    let (server, public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let ok = tagged("ok").await?;
    let echo = backend::echo().await?;
    let mut wrong = member("wrong", ok.addr, "web", 1, None);
    if let wmproxy_config::Exposure::Tcp { publish: wmproxy_config::Publish::Group(g), .. } = &mut wrong.exposure {
        g.key = wmproxy_config::Secret::new("not-the-key");
    }
    let mut config = server.client_config("x");
    config.services = vec![
        member("ok", ok.addr, "web", 1, None),
        wrong,
        member("nowhere", ok.addr, "no-such-group", 1, None),
        wmproxy_tests::tcp_service("plain", echo, 0),
    ];
    let mut client = TestClient::start(config).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = &status else { unreachable!() };
    let outcome = |name: &str| services.iter().find(|s| s.name == name).map(|s| s.outcome.clone());
    assert_eq!(outcome("ok"), Some(RegisterOutcome::Joined { port: public.port() }));
    assert_eq!(outcome("wrong"), Some(RegisterOutcome::WrongGroupKey));
    assert_eq!(outcome("nowhere"), Some(RegisterOutcome::UnknownGroup));
    println!("{}; {}", RegisterOutcome::WrongGroupKey, RegisterOutcome::UnknownGroup);
    let plain = status.port_of("plain").unwrap();
    backend::assert_echo(([127, 0, 0, 1], plain).into(), 1000, 3).await?;
    ensure!(which(public).await? == "ok");
    assert_eq!(server.handle.groups()[0].backends.len(), 1, "only the right key joined");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_group_spreads_flows_and_moves_them_off_a_dead_backend() -> Result<()> {
    use wmproxy_tests::udp;
    init_tracing();
    let public = udp::user().await?.local_addr()?;
    let group = wmproxy_config::GroupFile::Udp(groups::group("web", public.port(), Policy::RoundRobin));
    let server = TestServer::start(move |f| f.groups.push(group)).await?;
    let ((u1, stop_u1), (u2, _stop_u2)) = (udp::tagged_echo("u1").await?, udp::tagged_echo("u2").await?);
    // UDP backends are checked through a companion TCP port that dies with them.
    let (h1, h2) = (tagged("h1").await?, tagged("h2").await?);
    let udp_member = |name: &str, local, health: SocketAddr| {
        let mut check = tcp_check(50, 2, 2);
        check.addr = Some(health.to_string());
        groups::member_of(wmproxy_config::ServiceKind::Udp, (name, local), "web", 1, Some(check))
    };
    let _x = members(&server, "x", vec![udp_member("u1", u1, h1.addr)]).await?;
    let _y = members(&server, "y", vec![udp_member("u2", u2, h2.addr)]).await?;
    for b in ["u1", "u2"] {
        eventually("both backends healthy", || state_of(&server, b) == Some(HealthState::Healthy)).await?;
    }

    let mut users = Vec::new();
    let mut on_u1 = 0;
    for i in 0..20 {
        let socket = udp::user().await?;
        let reply = udp::request(&socket, public, format!("hi {i}").as_bytes()).await?;
        on_u1 += usize::from(reply.starts_with(b"u1:"));
        users.push(socket);
    }
    ensure!((5..=15).contains(&on_u1), "flows spread over both backends: {on_u1} of 20 on u1");

    stop_u1.cancel();
    h1.stop();
    eventually("u1 unhealthy", || state_of(&server, "u1") == Some(HealthState::Unhealthy)).await?;
    let deadline = tokio::time::Instant::now() + wmproxy_tests::DEADLINE;
    for (i, socket) in users.iter().enumerate() {
        loop {
            let reply = udp::request(socket, public, format!("again {i}").as_bytes()).await;
            if reply.as_deref().is_ok_and(|r| r.starts_with(b"u2:")) {
                break;
            }
            ensure!(tokio::time::Instant::now() < deadline, "user {i} never moved to u2");
        }
    }
    Ok(())
}

/// The client's `/status` shows each check's last result while its tunnel is up, and none once
/// the tunnel has ended (no stale "passed" for a backend the server no longer hears about).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_status_shows_its_checks_while_its_tunnel_is_up() -> Result<()> {
    init_tracing();
    let (mut server, _public) = server_with_group(Policy::RoundRobin, |_| {}).await?;
    let a = tagged("a").await?;
    let mut config = server.client_config("x");
    config.control = Some(wmproxy_tests::control_api());
    config.services = vec![member("a", a.addr, "web", 1, Some(tcp_check(50, 1, 1)))];
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let control = client.control_addr.ok_or_else(|| anyhow::anyhow!("the client's control API"))?;
    let checks = async || -> Result<Vec<serde_json::Value>> {
        let (status, body) =
            wmproxy_tests::control_call(control, Some(wmproxy_tests::CONTROL_TOKEN), "GET", "/status", "").await?;
        ensure!(status == 200, "{status} {body}");
        let status: serde_json::Value = serde_json::from_str(&body)?;
        Ok(status["health_checks"].as_array().cloned().unwrap_or_default())
    };
    eventually_async("a passed check in the client's status", async || {
        Ok(checks().await?.iter().any(|c| c["service"] == "a" && c["ok"] == true))
    })
    .await?;
    server.stop().await?;
    client.wait_for("the tunnel ended", |s| matches!(s, ClientStatus::Connecting { .. })).await?;
    eventually_async("no check results once the tunnel has ended", async || Ok(checks().await?.is_empty())).await?;
    Ok(())
}
