//! A real browser through the vhost: headless Chromium opens a page that a private service
//! serves by host name; the page opens a WebSocket back through the tunnel (a second service,
//! on the longer path prefix `/ws`), and the page reports the echo back to its server.
//!
//! Skipped, with a message, when no Chromium is found (`.ci/run` installs Debian's `chromium`;
//! `WMPROXY_CHROMIUM` names another binary).

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wmproxy_client::ClientStatus;
use wmproxy_config::{HttpRoute, Service};
use wmproxy_tests::browser::{BROWSER_DEADLINE, chromium_or_skip};
use wmproxy_tests::proxy::{read_head, websocket_echo};
use wmproxy_tests::{TestClient, TestServer, init_tracing};

/// The page: once the WebSocket answered (or failed), it reports the result back to the page's
/// own server, `GET /result?…`, which the test waits for. (Reading the DOM with `--dump-dom`
/// raced: headless Chromium's virtual time does not wait for WebSocket messages.)
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wmproxy browser test</title></head>
<body><p id="result">pending</p>
<script>
const result = document.getElementById("result");
const report = (text) => { result.textContent = text; fetch("/result?" + encodeURIComponent(text)); };
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onopen = () => ws.send("hello through the tunnel");
ws.onmessage = (event) => { report("echo: " + event.data); ws.close(); };
ws.onerror = () => report("websocket error");
</script></body></html>
"#;

/// A private web server that answers every request with [`PAGE`], and sends what the page
/// reports (`/result?…`, still URL-encoded) on the returned channel.
async fn page_server() -> Result<(SocketAddr, mpsc::Receiver<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (reports, reported) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reports = reports.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else { return };
                let path = head.split(|b| *b == b' ').nth(1).unwrap_or_default();
                if let Some(report) = path.strip_prefix(b"/result?") {
                    let _ = reports.send(String::from_utf8_lossy(report).into_owned()).await;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n",
                    PAGE.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(PAGE.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, reported))
}

fn http_service(name: &str, local: SocketAddr, location: &str) -> Service {
    let route = HttpRoute {
        custom_domains: vec!["app.example.com".into()],
        locations: vec![location.into()],
        ..HttpRoute::default()
    };
    wmproxy_tests::http_service(name, local, route)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_through_the_vhost_and_its_websocket_echoes_back() -> Result<()> {
    init_tracing();
    let Some(chromium) = chromium_or_skip() else { return Ok(()) };
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some("127.0.0.1:0".parse().expect("a literal address"));
        f.allow_domains = vec!["app.example.com".into()];
    })
    .await?;
    let vhost = server.handle.vhost_addr().context("vhost port")?;
    let (page, mut reported) = page_server().await?;
    let mut config = server.client_config("home");
    config.services = vec![http_service("page", page, "/"), http_service("socket", websocket_echo().await?, "/ws")];
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;

    let profile = tempfile::tempdir()?;
    let mut browser = tokio::process::Command::new(&chromium);
    browser
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg("--no-proxy-server")
        .arg("--host-resolver-rules=MAP app.example.com 127.0.0.1")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://app.example.com:{}/", vhost.port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut browser = browser.spawn().with_context(|| format!("cannot run {}", chromium.display()))?;
    let report = tokio::time::timeout(BROWSER_DEADLINE, reported.recv()).await;
    let _ = browser.start_kill();
    let output = browser.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr_tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    ensure!(
        matches!(&report, Ok(Some(r)) if r == "echo%3A%20hello%20through%20the%20tunnel"),
        "the page reported {report:?}; last lines of Chromium's stderr, newest first:\n{}",
        stderr_tail.join("\n")
    );
    Ok(())
}
