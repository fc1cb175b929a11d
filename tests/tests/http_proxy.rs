//! The client's HTTP proxy, egress at the server: curl through it (absolute-form GET and
//! CONNECT), credentials, malformed and oversized requests, denied and unreachable targets, and
//! a slowloris header.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wmproxy_config::ProxyType;
use wmproxy_tests::backend::{checksum, dead_port, pattern};
use wmproxy_tests::proxy::{curl, file_server};
use wmproxy_tests::{TestClient, TestServer, init_tracing};

async fn setup(
    allow_loopback: bool,
    credentials: Option<(&str, &str)>,
) -> Result<(TestServer, TestClient, SocketAddr)> {
    wmproxy_tests::proxy::setup(ProxyType::Http, allow_loopback, credentials).await
}

/// Sends `request` raw and returns the status line of the answer.
async fn status_of(proxy: SocketAddr, request: &[u8]) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream.write_all(request).await?;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(wmproxy_tests::DEADLINE, stream.read_to_end(&mut back)).await;
    let text = String::from_utf8_lossy(&back);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_downloads_10_mib_as_a_plain_get_and_through_connect() -> Result<()> {
    init_tracing();
    let body = pattern(10 * 1024 * 1024, 7);
    let (web, _) = file_server(body.clone()).await?;
    let url = format!("http://localhost:{}/file", web.port());
    for credentials in [None, Some(("bob", "pa55word"))] {
        let (_s, _c, proxy) = setup(true, credentials).await?;
        let proxy_url = match credentials {
            Some((u, p)) => format!("http://{u}:{p}@{proxy}"),
            None => format!("http://{proxy}"),
        };
        let got = curl(&["--proxy", &proxy_url, &url]).await?;
        ensure!(got.len() == body.len() && checksum(&got) == checksum(&body), "GET altered ({credentials:?})");
        let got = curl(&["--proxytunnel", "--proxy", &proxy_url, &url]).await?;
        ensure!(got.len() == body.len() && checksum(&got) == checksum(&body), "CONNECT altered ({credentials:?})");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_get_407_and_no_dial() -> Result<()> {
    init_tracing();
    let (web, accepted) = file_server(b"secret".to_vec()).await?;
    let (_s, _c, proxy) = setup(true, Some(("bob", "pa55word"))).await?;
    let target = format!("127.0.0.1:{}", web.port());
    let get = format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n");
    ensure!(status_of(proxy, get.as_bytes()).await?.starts_with("HTTP/1.1 407"));
    let wrong =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic Ym9iOndyb25n\r\n\r\n");
    ensure!(status_of(proxy, wrong.as_bytes()).await?.starts_with("HTTP/1.1 407"));
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream.write_all(get.as_bytes()).await?;
    let mut back = vec![0u8; 4096];
    let n = stream.read(&mut back).await?;
    let head = String::from_utf8_lossy(&back[..n]).to_lowercase();
    ensure!(head.contains("proxy-authenticate: basic"), "407 names the scheme: {head}");
    ensure!(accepted.load(Ordering::Relaxed) == 0, "the target saw a connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_431_403_and_502() -> Result<()> {
    init_tracing();
    let (web, accepted) = file_server(b"nope".to_vec()).await?;
    let (_s, _c, proxy) = setup(false, None).await?; // default egress: loopback denied
    ensure!(status_of(proxy, b"THIS IS NOT HTTP\r\n\r\n").await?.starts_with("HTTP/1.1 400"));
    ensure!(status_of(proxy, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n").await?.starts_with("HTTP/1.1 400"));
    let huge = format!("GET http://example.com/ HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    ensure!(status_of(proxy, huge.as_bytes()).await?.starts_with("HTTP/1.1 431"));
    let denied = format!("CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\r\n", web.port());
    ensure!(status_of(proxy, denied.as_bytes()).await?.starts_with("HTTP/1.1 403"));
    let metadata = "GET http://169.254.169.254/latest/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
    ensure!(status_of(proxy, metadata.as_bytes()).await?.starts_with("HTTP/1.1 403"));
    ensure!(accepted.load(Ordering::Relaxed) == 0, "a denied target saw a connection");

    let (_s2, _c2, open) = setup(true, None).await?;
    let dead = dead_port().await?;
    let unreachable = format!("CONNECT {dead} HTTP/1.1\r\nHost: {dead}\r\n\r\n");
    ensure!(status_of(open, unreachable.as_bytes()).await?.starts_with("HTTP/1.1 502"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_header_is_closed_at_its_deadline_while_others_are_served() -> Result<()> {
    init_tracing();
    let (web, _) = file_server(b"hello".to_vec()).await?;
    let (_s, _c, proxy) = setup(true, None).await?;
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(proxy).await?;
    slow.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Slow: ").await?;
    let got = curl(&["--proxy", &format!("http://{proxy}"), &format!("http://127.0.0.1:{}/", web.port())]).await?;
    ensure!(got == b"hello" && started.elapsed() < std::time::Duration::from_secs(1), "served at once");
    let mut back = Vec::new();
    tokio::time::timeout(wmproxy_tests::DEADLINE, slow.read_to_end(&mut back)).await??;
    let took = started.elapsed();
    ensure!(took >= std::time::Duration::from_millis(900), "closed at the 1 s deadline, not before: {took:?}");
    println!("slowloris closed after {took:?}: {:?}", String::from_utf8_lossy(&back).lines().next());
    Ok(())
}
