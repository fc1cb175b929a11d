//! A reload revokes: what the new config no longer allows is taken back from live sessions, and
//! a client caught half-way by the reload gets nothing it refuses.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::HttpRoute;
use wmproxy_tests::groups::{GROUP_KEY, member, tagged, which};
use wmproxy_tests::proxy::http_tagged;
use wmproxy_tests::tcp_service;
use wmproxy_tests::{CONTROL_TOKEN, TOKEN, TestClient, TestServer, backend, http_service, init_tracing, raw};
use wmproxy_wire::{HelloReply, RegisterOutcome, RejectReason};

use super::{Tenant, get, strings, tcp};

/// The client `home`'s entry and what it may publish, and the TCP group `g` on `group_port`
/// if given; with a vhost port and a control API.
fn server_toml(dir: &Path, (token, ports, domains): (&str, &[u16], &[&str]), group_port: Option<u16>) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let mut text = format!(
        "bind = \"127.0.0.1:0\"\nstate_dir = \"{}\"\npublic_bind = \"127.0.0.1\"\n\n\
         [control]\nbind = \"127.0.0.1:0\"\ntoken = \"{CONTROL_TOKEN}\"\n\n[vhost]\nhttp_bind = \"127.0.0.1:0\"\n\n\
         [[clients]]\nname = \"home\"\ntoken = \"{token}\"\nallow_ports = [{}]\nallow_domains = [{}]\n",
        dir.display(),
        ports.join(", "),
        domains.join(", "),
    );
    if let Some(port) = group_port {
        text += &format!("\n[[groups]]\nname = \"g\"\nkey = \"{GROUP_KEY}\"\nremote_port = {port}\n");
    }
    text
}

/// `n` distinct free ports (below the ephemeral range, so nothing else takes them meanwhile).
async fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = backend::fixed_port().await?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Reloads `server` and returns its report.
async fn reload(server: &TestServer) -> Result<Value> {
    let (status, body) = server.control("POST", "/reload", "").await?;
    ensure!(status == 200, "reload: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

fn outcome_of(status: &ClientStatus, service: &str) -> Option<RegisterOutcome> {
    let ClientStatus::Connected { services, .. } = status else { return None };
    services.iter().find(|s| s.name == service).map(|s| s.outcome.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_narrows_a_client_takes_back_what_it_no_longer_allows() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    let ports = free_ports(3).await?;
    let (keep, drop, group) = (ports[0], ports[1], ports[2]);
    let allowances = (TOKEN, &[keep, drop][..], &["*.example.com"][..]);
    std::fs::write(&path, server_toml(dir.path(), allowances, Some(group)))?;
    let server = TestServer::start_from(&path).await?;
    let vhost = server.handle.vhost_addr().context("a vhost port")?;

    let (echo, tagged) = (backend::echo().await?, tagged("member").await?);
    let mut config = server.client_config("home");
    let route = HttpRoute { custom_domains: strings(&["app.example.com"]), ..HttpRoute::default() };
    config.services = vec![
        tcp_service("keep", echo, keep),
        tcp_service("drop", echo, drop),
        http_service("web", http_tagged("web").await?, route),
        member("member", tagged.addr, "g", 1, None),
    ];
    let mut client = TestClient::start(config).await?;
    client.wait_for("all four published", |s| outcome_of(s, "member").is_some()).await?;
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    backend::assert_echo(local(drop), 1000, 1).await?;
    ensure!(get(vhost, "app.example.com", "/").await?.0 == 200, "web is served");
    ensure!(which(local(group)).await? == "member", "the group is served by its member");
    let mut held = TcpStream::connect(local(keep)).await?;

    // Narrower: `drop`'s port and `web`'s host are no longer allowed, and the group is gone.
    let narrower = (TOKEN, &[keep][..], &["other.example.org"][..]);
    std::fs::write(&path, server_toml(dir.path(), narrower, None))?;
    let report = reload(&server).await?;
    ensure!(report["withdrawn"] == json!(["home/drop", "home/member", "home/web"]), "{report}");

    // The client is told, with why; each is unreachable at once.
    let now = client
        .wait_for("the client told", |s| matches!(outcome_of(s, "drop"), Some(RegisterOutcome::PortNotAllowed { .. })))
        .await?;
    let web = RegisterOutcome::DomainNotAllowed("app.example.com".into());
    ensure!(outcome_of(&now, "web") == Some(web), "{now:?}");
    ensure!(outcome_of(&now, "member") == Some(RegisterOutcome::UnknownGroup), "{now:?}");
    ensure!(now.port_of("keep") == Some(keep), "{now:?}");
    backend::refused(drop).await?;
    backend::refused(group).await?;
    let (status, _) = get(vhost, "app.example.com", "/").await?;
    ensure!(status == 404, "web still routed: {status}");

    // What is still allowed is untouched: the held connection and new ones.
    held.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    held.read_exact(&mut back).await?;
    ensure!(&back == b"still here", "the held connection");
    backend::assert_echo(local(keep), 1000, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_caught_half_way_by_a_reload_gets_nothing_the_new_config_refuses() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("server.toml");
    let ports = free_ports(2).await?;
    std::fs::write(&path, server_toml(dir.path(), (TOKEN, &ports, &[]), None))?;
    let server = TestServer::start_from(&path).await?;

    // Authenticated under the old allowance, it registers only after a reload narrowed it.
    let mut late = Tenant::join_with(&server, "home", TOKEN).await?;
    std::fs::write(&path, server_toml(dir.path(), (TOKEN, &ports[1..], &[]), None))?;
    reload(&server).await?;
    let outcomes = late.register(vec![tcp("old", ports[0]), tcp("new", ports[1])]).await?;
    let allowed = ports[1..].iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    ensure!(outcomes[0] == RegisterOutcome::PortNotAllowed { allowed }, "{outcomes:?}");
    ensure!(outcomes[1] == RegisterOutcome::Ok { port: ports[1] }, "{outcomes:?}");
    backend::refused(ports[0]).await?;

    // A second connection with the old token is being seated: the server asks the live session
    // (which does not answer) whether it is there. The token changes meanwhile.
    let (_endpoint, second) = raw::connect(&server).await?;
    let seated = tokio::spawn(async move { raw::hello(&second, "home", TOKEN, None).await.map(|(reply, ..)| reply) });
    let ping = tokio::time::timeout(wmproxy_tests::DEADLINE, late._conn.accept_bi()).await;
    // Held unanswered: any reaction would count as an answer.
    let _ping = ping.context("no ping")?.context("the server's ping")?;
    std::fs::write(&path, server_toml(dir.path(), ("a-new-token-after-a-leak", &ports, &[]), None))?;
    reload(&server).await?;
    match seated.await?? {
        HelloReply::Reject(RejectReason::BadCredentials) => {}
        other => bail!("a revoked token was seated: {other:?}"),
    }
    ensure!(server.handle.clients().is_empty(), "{:?}", server.handle.clients());
    Ok(())
}
