//! The dashboards in a real browser: headless Chromium, driven over the DevTools protocol
//! (`wmproxy_tests::browser`), against a real server, client and backends:
//! 1. logs in to the server's page with the token (a wrong one is refused);
//! 2. sees the connected client and its service;
//! 3. sees a killed backend turn unhealthy within the check interval (plus one page refresh);
//! 4. drains a backend from its button, and the server sends it no new connections;
//! 5. sees the traffic chart move while a transfer runs;
//!
//! and then the client's page: its tunnel, services and health checks.
//!
//! With `WMPROXY_SCREENSHOTS=<dir>`, a PNG of each step is saved there. Skipped, with a message,
//! when no Chromium is found.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use wmproxy_client::ClientStatus;
use wmproxy_config::{GroupFile, Policy};
use wmproxy_tests::browser::{Browser, chromium_or_skip};
use wmproxy_tests::groups::{self, member, tagged, tcp_check, which};
use wmproxy_tests::{CONTROL_TOKEN, TestClient, TestServer, backend, control_api, init_tracing, tcp_service};

/// The health checks' interval; `fall` and `rise` are 1.
const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often the page refreshes (`POLL_MS` in `common.js`).
const PAGE_POLL: Duration = Duration::from_secs(2);
/// What a page may take to show a change: a refresh, the check, and a loaded machine's slack.
const SHOWN_WITHIN: Duration = Duration::from_secs(10);

/// Saves a screenshot of step `name` when `WMPROXY_SCREENSHOTS` names a directory.
async fn screenshot(browser: &mut Browser, name: &str) -> Result<()> {
    let Some(dir) = std::env::var_os("WMPROXY_SCREENSHOTS").map(PathBuf::from) else { return Ok(()) };
    std::fs::create_dir_all(&dir)?;
    browser.screenshot(&dir.join(format!("{name}.png"))).await
}

/// Logs in to the page at `url` with `token`: fills the form and submits it.
async fn log_in(browser: &mut Browser, token: &str) -> Result<()> {
    browser.wait_for("!document.querySelector('#login').hidden", SHOWN_WITHIN).await?;
    let submit = format!(
        "document.querySelector('#token').value = {token:?}; document.querySelector('#login button').click(); true"
    );
    browser.eval(&submit).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_in_a_browser() -> Result<()> {
    init_tracing();
    let Some(chromium) = chromium_or_skip() else { return Ok(()) };
    let public = backend::dead_port().await?;
    let group = groups::group("web", public.port(), Policy::RoundRobin);
    let server = TestServer::start(move |f| f.groups.push(GroupFile::Tcp(group))).await?;
    let (a, mut b) = (tagged("a").await?, tagged("b").await?);
    let check = || Some(tcp_check(u64::try_from(CHECK_INTERVAL.as_millis()).unwrap_or(200), 1, 1));
    let mut config = server.client_config("home");
    config.control = Some(control_api());
    // A visitor through the server, of a client that is not there: its row on the client's page.
    config.visitors.push(wmproxy_config::visitor::Visitor {
        name: wmproxy_tests::name("office-db"),
        kind: wmproxy_wire::ServiceKind::Tcp,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        client: wmproxy_tests::name("office"),
        service: wmproxy_tests::name("db"),
        secret_key: None,
        mode: wmproxy_config::visitor::VisitMode::Relay,
    });
    config.services = vec![
        member("a", a.addr, "web", 1, check()),
        member("b", b.addr, "web", 1, check()),
        tcp_service("bulk", backend::echo().await?, 0),
    ];
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let bulk = std::net::SocketAddr::from(([127, 0, 0, 1], client.port_of("bulk").await?));
    let control = server.handle.control_addr().context("the server's control API")?;

    let mut browser = Browser::launch(&chromium).await?;
    browser.navigate(&format!("http://{control}/")).await?;

    // 1. A wrong token is refused and the page asks again; the right one shows the dashboard.
    log_in(&mut browser, "not-the-token").await?;
    let refused = browser.wait_for("document.querySelector('#login-error').textContent", SHOWN_WITHIN).await?;
    ensure!(refused == "Wrong token.", "the login said {refused}");
    ensure!(browser.eval("document.querySelector('#main').hidden").await? == true, "nothing shown on a wrong token");
    screenshot(&mut browser, "1-wrong-token").await?;
    log_in(&mut browser, CONTROL_TOKEN).await?;
    browser.wait_for("document.querySelector('[data-client=\"home\"]')?.textContent", SHOWN_WITHIN).await?;
    let kept = browser
        .eval(&format!("sessionStorage.getItem('wmproxy-token') === {CONTROL_TOKEN:?} && document.cookie === ''"))
        .await?;
    ensure!(kept == true, "the token is kept in sessionStorage, and no cookie is set");

    // 2. The client and its service.
    let row = "document.querySelector('[data-service=\"home/bulk\"]')?.textContent";
    let text = browser.wait_for(row, SHOWN_WITHIN).await?;
    let port = bulk.port();
    ensure!(text.as_str().is_some_and(|t| t.contains("ok") && t.contains(&format!("port {port}"))), "{text}");
    let overview = browser.eval("document.querySelector('[data-item=\"Tunnels\"] dd').textContent").await?;
    ensure!(overview == "1", "overview tunnels: {overview}");
    screenshot(&mut browser, "2-client").await?;

    // 3. A killed backend turns unhealthy on the page.
    let health =
        |backend: &str| format!("document.querySelector('[data-backend=\"home:{backend}\"] .health')?.textContent");
    browser.wait_for(&format!("{} === 'healthy'", health("b")), SHOWN_WITHIN).await?;
    b.stop();
    let killed = tokio::time::Instant::now();
    browser.wait_for(&format!("{} === 'unhealthy'", health("b")), CHECK_INTERVAL + PAGE_POLL + SHOWN_WITHIN).await?;
    let took = killed.elapsed();
    // Within the check interval and one refresh, with room for a loaded machine.
    let bound = (CHECK_INTERVAL + PAGE_POLL) * 2 + Duration::from_secs(2);
    ensure!(took <= bound, "shown unhealthy after {took:?}");
    let events = "[...document.querySelectorAll('#events li')].map(li => li.textContent).join('\\n')";
    let listed = browser.wait_for(&format!("{events}.includes('home:b is unhealthy')"), SHOWN_WITHIN).await;
    ensure!(listed.is_ok(), "the event list: {}", browser.eval(events).await?);
    screenshot(&mut browser, "3-unhealthy").await?;

    // 4. Drain `a` from its button (with `b` back): new connections all go to `b`.
    b.restart().await?;
    browser.wait_for(&format!("{} === 'healthy'", health("b")), SHOWN_WITHIN).await?;
    browser.eval("document.querySelector('[data-backend=\"home:a\"] button.drain').click(); true").await?;
    browser.wait_for("document.querySelector('[data-backend=\"home:a\"] button.undrain')", SHOWN_WITHIN).await?;
    for _ in 0..10 {
        ensure!(which(public).await? == "b", "a drained backend got a new connection");
    }
    browser.wait_for(&format!("{events}.includes('home:a drained')"), SHOWN_WITHIN).await?;
    screenshot(&mut browser, "4-drained").await?;

    // 5. The traffic chart moves while a transfer runs through `bulk`.
    let latest = "Number(document.querySelector('#traffic .chart').dataset.latest)";
    let stop = CancellationToken::new();
    let transfer = tokio::spawn({
        let stop = stop.clone();
        async move {
            for round in 0..200 {
                if stop.is_cancelled() {
                    break;
                }
                backend::bulk_echo(TcpStream::connect(bulk).await?, 4 * 1024 * 1024, round).await?;
            }
            anyhow::Ok(())
        }
    });
    let moved = browser.wait_for(&format!("{latest} > 1e6 && {latest}"), SHOWN_WITHIN).await;
    stop.cancel();
    transfer.await??;
    let moved = moved?;
    screenshot(&mut browser, "5-traffic").await?;
    ensure!(moved.as_f64().is_some_and(|rate| rate > 1e6), "{moved}");

    // The client's page: its tunnel, its services and its health checks.
    let client_control = client.control_addr.context("the client's control API")?;
    browser.navigate(&format!("http://{client_control}/")).await?;
    log_in(&mut browser, CONTROL_TOKEN).await?;
    let tunnel = browser.wait_for("document.querySelector('#tunnels h3')?.textContent", SHOWN_WITHIN).await?;
    ensure!(tunnel.as_str().is_some_and(|t| t.ends_with("connected")), "{tunnel}");
    browser.wait_for("document.querySelector('[data-service=\"bulk\"]')", SHOWN_WITHIN).await?;
    let checks = browser.wait_for("document.querySelector('#checks table')?.textContent", SHOWN_WITHIN).await?;
    ensure!(checks.as_str().is_some_and(|t| t.contains("passed")), "{checks}");
    let visitor = "document.querySelector('#visitors [data-visitor=\"office-db\"]')?.textContent";
    let visitor = browser.wait_for(visitor, SHOWN_WITHIN).await?;
    ensure!(visitor.as_str().is_some_and(|t| t.contains("office/db") && t.contains("relayed")), "{visitor}");
    screenshot(&mut browser, "6-client-page").await?;
    Ok(())
}
