//! Reloading a running client (services added, removed and kept on the live tunnel, while a
//! large transfer through a kept service goes on) and a running server (groups added, removed
//! and changed in place); a bad file changes nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_tests::backend::{self, checksum, pattern};
use wmproxy_tests::groups::{GROUP_KEY, member, tagged, which, which_from};
use wmproxy_tests::{CONTROL_TOKEN, DEADLINE, TOKEN, TestClient, TestServer, control_call, eventually, init_tracing};

/// Half of the transfer through the kept service: one half before the reload, one after.
const HALF: usize = 128 * 1024 * 1024;

fn service(name: &str, local: SocketAddr) -> String {
    format!("\n[[services]]\nname = \"{name}\"\nlocal_addr = \"{local}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reload_keeps_a_256_mib_transfer_adds_b_removes_c_and_refuses_bad_files() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (sink, received) = backend::checksum_sink().await?;
    let echo = backend::echo().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("client.toml");
    let head = server.client_toml("home");
    // `d` keeps its public port across the reload but changes its backend.
    let (port_d, new_d) = (backend::dead_port().await?.port(), tagged("new-d").await?);
    let d = |local: SocketAddr| format!("{}remote_port = {port_d}\n", service("d", local));
    std::fs::write(&path, format!("{head}{}{}{}", service("a", sink), service("c", echo), d(echo)))?;
    let (mut client, control) = TestClient::start_from(&path).await?;
    let port_a = client.port_of("a").await?;
    let port_c = client.port_of("c").await?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port_c)), 1000, 3).await?;

    // The first half of A's transfer goes through before the reload, the second after.
    let data = pattern(2 * HALF, 42);
    let expected = checksum(&data);
    let (mut from_a, mut to_a) = TcpStream::connect(("127.0.0.1", port_a)).await?.into_split();
    let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        to_a.write_all(&data[..HALF]).await?;
        resumed.await?;
        to_a.write_all(&data[HALF..]).await?;
        to_a.shutdown().await?;
        anyhow::Ok(())
    });
    eventually("A's bytes reaching its backend", || received.load(Ordering::Relaxed) >= 1024 * 1024).await?;

    std::fs::write(&path, format!("{head}{}{}{}", service("a", sink), service("b", echo), d(new_d.addr)))?;
    let (status, body) = control_call(control, Some(CONTROL_TOKEN), "POST", "/reload", "").await?;
    ensure!(status == 200, "reload: {status} {body}");
    let report: Value = serde_json::from_str(&body)?;
    ensure!(report["added"] == json!(["services.b"]) && report["removed"] == json!(["services.c"]), "{body}");
    ensure!(report["changed"] == json!(["services.d"]) && report["restart_required"] == json!([]), "{body}");
    let now = client.wait_for("b published", |s| s.port_of("b").is_some()).await?;
    ensure!(now.port_of("c").is_none() && now.port_of("a") == Some(port_a), "{now:?}");
    let port_b = now.port_of("b").context("b")?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port_b)), 100_000, 7).await?;
    backend::refused(port_c).await?;
    let d_now = which(SocketAddr::from(([127, 0, 0, 1], port_d))).await?;
    ensure!(now.port_of("d") == Some(port_d) && d_now == "new-d", "d on its port: {d_now} {now:?}");

    // A bad file (an unknown key, then a syntax error) is refused with its key and line, and
    // changes nothing.
    std::fs::write(&path, format!("{head}{}bnid = 1\n", service("a", sink)))?;
    let line = format!("line {}", std::fs::read_to_string(&path)?.lines().count());
    let (status, body) = control_call(control, Some(CONTROL_TOKEN), "POST", "/reload", "").await?;
    ensure!(status == 422 && body.contains("bnid") && body.contains(&line), "unknown key: {status} {body}");
    std::fs::write(&path, format!("{head}[[services]\n"))?;
    let line = format!("line {}", std::fs::read_to_string(&path)?.lines().count());
    let (status, body) = control_call(control, Some(CONTROL_TOKEN), "POST", "/reload", "").await?;
    ensure!(status == 422 && body.contains(&line), "syntax error: {status} {body}");
    let (status, body) = control_call(control, Some(CONTROL_TOKEN), "POST", "/adapt", "").await?;
    ensure!(status == 422 && body.contains(&line), "adapt: {status} {body}");
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port_b)), 100_000, 8).await?;
    let (_, status_body) = control_call(control, Some(CONTROL_TOKEN), "GET", "/status", "").await?;
    let services: Value = serde_json::from_str::<Value>(&status_body)?["services"].clone();
    ensure!(services.as_array().map(Vec::len) == Some(3), "{status_body}");

    // The client's API also wants its token, and shows no secret.
    let (status, _) = control_call(control, None, "GET", "/status", "").await?;
    ensure!(status == 401);
    let (_, now) = control_call(control, Some(CONTROL_TOKEN), "GET", "/now", "").await?;
    ensure!(!now.contains(TOKEN) && !now.contains(CONTROL_TOKEN) && now.contains("MASKED"), "{now}");

    // A's transfer, which spans the reloads, completes intact.
    resume.send(()).ok().context("writer gone")?;
    let mut answer = [0u8; 16];
    from_a.read_exact(&mut answer).await?;
    writer.await??;
    let count = u64::from_be_bytes(answer[..8].try_into()?);
    let sum = u64::from_be_bytes(answer[8..].try_into()?);
    ensure!(count == 2 * HALF as u64 && sum == expected, "A's backend got {count} bytes, checksum {sum:x}");

    // The client's /metrics counts A's bytes once the connection has ended on its side too.
    drop(from_a);
    let line = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("wmproxy_client_service_bytes_in_total{service=\"a\"} ")?.parse::<u64>().ok())
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let metrics = loop {
        let (_, text) = control_call(control, Some(CONTROL_TOKEN), "GET", "/metrics", "").await?;
        if line(&text).is_some_and(|n| n >= 2 * HALF as u64) {
            break text;
        }
        ensure!(tokio::time::Instant::now() < deadline, "A's bytes never counted: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    ensure!(metrics.lines().any(|l| l == "wmproxy_client_tunnel_up 1"), "{metrics}");
    ensure!(metrics.lines().any(|l| l == "wmproxy_client_tunnel_transport{transport=\"quic\"} 1"), "{metrics}");
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))?;
    ensure!(scrape.samples.iter().any(|s| s.metric == "wmproxy_client_connections_total"), "{metrics}");
    Ok(())
}

/// A server config file: `[[groups]]` of TCP groups `(name, port)` with `policy`, and a SOCKS5
/// proxy through the client `home` on `proxy`.
fn server_toml(state: &std::path::Path, grace: u64, policy: &str, groups: &[(&str, u16)], proxy: u16) -> String {
    let mut text = format!(
        "bind = \"127.0.0.1:0\"\nstate_dir = \"{}\"\npublic_bind = \"127.0.0.1\"\ntoken = \"{TOKEN}\"\n\
         allow_ports = [\"1024-65535\"]\n\n[limits]\ndrain_grace_secs = {grace}\n\n\
         [control]\nbind = \"127.0.0.1:0\"\ntoken = \"{CONTROL_TOKEN}\"\n",
        state.display()
    );
    text += &format!("\n[[proxies]]\ntype = \"socks5\"\nlisten = \"127.0.0.1:{proxy}\"\nvia = \"home\"\n");
    for (name, port) in groups {
        text += &format!(
            "\n[[groups]]\nname = \"{name}\"\nkey = \"{GROUP_KEY}\"\nremote_port = {port}\npolicy = \"{policy}\"\n"
        );
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_reload_changes_policy_in_place_adds_and_removes_groups_and_refuses_bad_files() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    let mut ports = Vec::new();
    while ports.len() < 5 {
        let port = backend::dead_port().await?.port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let (p1, p2, p3, old_proxy, new_proxy) = (ports[0], ports[1], ports[2], ports[3], ports[4]);
    std::fs::write(&path, server_toml(dir.path(), 1, "round_robin", &[("g1", p1), ("g2", p2)], old_proxy))?;
    let server = TestServer::start_from(&path).await?;
    let (a, b, echo) = (tagged("a").await?, tagged("b").await?, backend::echo().await?);
    let mut config = server.client_config("home");
    config.services = vec![member("a", a.addr, "g1", 1, None), member("b", b.addr, "g1", 1, None)];
    config.services.push(member("c", echo, "g2", 1, None));
    let mut client = TestClient::start(config).await?;
    client.wait_for("joined", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let g1 = SocketAddr::from(([127, 0, 0, 1], p1));
    let g2 = SocketAddr::from(([127, 0, 0, 1], p2));
    let (first, second) = (which(g1).await?, which(g1).await?);
    ensure!(first != second, "round robin alternates: {first} {second}");
    let (held_tag, mut held) = which_from(g1, None).await?;

    // Bad files: refused with key and line; nothing changes.
    std::fs::write(&path, "bind = \"127.0.0.1:0\"\nbnid = 1\n")?;
    let (status, body) = server.control("POST", "/reload", "").await?;
    ensure!(status == 422 && body.contains("bnid") && body.contains("line 2"), "unknown key: {status} {body}");
    std::fs::write(&path, "bind = \"127.0.0.1:0\"\n[limits\n")?;
    let (status, body) = server.control("POST", "/reload", "").await?;
    ensure!(status == 422 && body.contains("line 2"), "syntax error: {status} {body}");
    backend::assert_echo(g2, 10_000, 1).await?;

    // g1's policy changes, g2 goes, g3 comes, the proxy moves; the grace period needs a restart.
    TcpStream::connect(("127.0.0.1", old_proxy)).await.context("the first proxy listens")?;
    std::fs::write(&path, server_toml(dir.path(), 2, "ip_hash", &[("g1", p1), ("g3", p3)], new_proxy))?;
    let (status, body) = server.control("POST", "/reload", "").await?;
    ensure!(status == 200, "reload: {status} {body}");
    let report: Value = serde_json::from_str(&body)?;
    let (added_proxy, removed_proxy) =
        (format!("proxies.127.0.0.1:{new_proxy}"), format!("proxies.127.0.0.1:{old_proxy}"));
    ensure!(report["added"] == json!(["groups.g3", added_proxy]), "{body}");
    ensure!(report["removed"] == json!(["groups.g2", removed_proxy]), "{body}");
    ensure!(report["changed"] == json!(["groups.g1"]) && report["restart_required"] == json!(["limits"]), "{body}");

    // The connection held through g1 still works, and g1 kept both backends.
    held.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    held.read_exact(&mut back).await?;
    ensure!(&back == b"still here", "held connection to {held_tag}");
    let groups = server.handle.groups();
    let names: Vec<_> = groups.iter().map(|g| (g.name.as_str(), g.backends.len())).collect();
    ensure!(names == [("g1", 2), ("g3", 0)], "{names:?}");
    // ip_hash now: one user address sticks to one backend.
    let sticky = which(g1).await?;
    for _ in 0..3 {
        ensure!(which(g1).await? == sticky, "ip_hash keeps a user on one backend");
    }
    backend::refused(p2).await?;
    backend::refused(old_proxy).await?;
    TcpStream::connect(("127.0.0.1", new_proxy)).await.context("the new proxy listens")?;
    let mut g3 = TcpStream::connect(("127.0.0.1", p3)).await?;
    ensure!(g3.read(&mut [0u8; 1]).await? == 0, "g3 has no backend yet: closed");

    let (_, now) = server.control("GET", "/now", "").await?;
    let now: Value = serde_json::from_str(&now)?;
    ensure!(now["limits"]["drain_grace_secs"] == 1 && now["groups"][0]["policy"] == "ip_hash", "{now}");
    let (_, metrics) = server.control("GET", "/metrics", "").await?;
    for line in ["wmproxy_reloads_total 3", "wmproxy_reload_failures_total 2", "wmproxy_last_reload_success 1"] {
        ensure!(metrics.lines().any(|l| l == line), "no `{line}` in {metrics}");
    }
    Ok(())
}

/// Sends `payload` from `socket` to `to` until a reply comes (UDP may drop the first packets
/// while a flow opens); returns it.
async fn udp_answer(socket: &tokio::net::UdpSocket, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    for _ in 0..50 {
        if let Ok(reply) = wmproxy_tests::udp::request(socket, to, payload).await {
            return Ok(reply);
        }
    }
    anyhow::bail!("no UDP reply from {to}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_service_changed_by_a_reload_keeps_its_fixed_port_and_reaches_its_new_backend() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let ((old, _o), (new, _n)) =
        (wmproxy_tests::udp::tagged_echo("old").await?, wmproxy_tests::udp::tagged_echo("new").await?);
    let port = tokio::net::UdpSocket::bind("127.0.0.1:0").await?.local_addr()?.port();
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("client.toml");
    let head = server.client_toml("home");
    let u = |local: SocketAddr| {
        format!("{head}\n[[services]]\nname = \"u\"\ntype = \"udp\"\nlocal_addr = \"{local}\"\nremote_port = {port}\n")
    };
    std::fs::write(&path, u(old))?;
    let (mut client, control) = TestClient::start_from(&path).await?;
    ensure!(client.port_of("u").await? == port);
    let user = wmproxy_tests::udp::user().await?;
    ensure!(udp_answer(&user, public, b"x").await? == b"old:x", "before the reload");

    // The user's flow is live while the service changes its backend on the same port.
    std::fs::write(&path, u(new))?;
    let (status, body) = control_call(control, Some(CONTROL_TOKEN), "POST", "/reload", "").await?;
    ensure!(status == 200 && body.contains("services.u"), "reload: {status} {body}");
    let now = client.wait_for("u published again", |s| s.port_of("u").is_some()).await?;
    ensure!(now.port_of("u") == Some(port), "u lost its port: {now:?}");
    let fresh = wmproxy_tests::udp::user().await?;
    ensure!(udp_answer(&fresh, public, b"y").await? == b"new:y", "a new user after the reload");
    Ok(())
}
