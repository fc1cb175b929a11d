//! Proxies and forwards are as visible as services (item 1): an access log line, per-listener
//! counters in `/metrics` and an entry in `/status`, on both ends, and an egress refusal logged
//! at INFO where it is decided. Bytes are counted as they pass (item 2): a connection cut
//! half-way reports what it carried, in the access log and in the metrics.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Level;
use wmproxy_config::ProxyType;
use wmproxy_config::proxy::{ServerProxyFields, ServerProxyFile};
use wmproxy_tests::logs::{Event, Logs};
use wmproxy_tests::metrics::sample;
use wmproxy_tests::proxy::{curl, file_server, proxy};
use wmproxy_tests::{CONTROL_TOKEN, TestClient, TestServer, control_call, eventually_async, forward_to, tcp_service};

/// The access log line of the connection of `user`.
async fn access_line(logs: &Logs, user: SocketAddr) -> Result<Event> {
    let user = user.to_string();
    logs.wait_for("the access log line", |e| e.target == "wmproxy::access" && e.field("user") == user).await
}

/// The access log line of a connection to `to` through the listener at `listen`.
async fn access_line_to(logs: &Logs, listen: SocketAddr, to: &str) -> Result<Event> {
    let (listen, what) = (listen.to_string(), format!("an access log line for {to} through {listen}"));
    let found =
        logs.wait_for(&what, |e| e.target == "wmproxy::access" && e.field("listen") == listen && e.field("to") == to);
    found.await
}

async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) = control_call(addr, Some(CONTROL_TOKEN), "GET", path, "").await?;
    ensure!(status == 200, "{path}: {status} {body}");
    Ok(body)
}

fn parse_metrics(text: &str) -> Result<prometheus_parse::Scrape> {
    Ok(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_proxies_and_forwards_are_logged_counted_and_listed() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|f| {
        f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))];
    })
    .await?;
    let body = vec![b'x'; 100_000];
    let (site, _) = file_server(body.clone()).await?;
    let mut config = server.client_config("traffic-home");
    let udp_echo = wmproxy_tests::udp::echo().await?;
    config.forwards.push(forward_to(site));
    config.forwards.push(wmproxy_tests::udp::forward_to(udp_echo));
    config.proxies.push(proxy(ProxyType::Socks5, None));
    config.proxies.push(proxy(ProxyType::Http, None));
    config.control = Some(wmproxy_tests::control_api());
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let [forward, udp_forward, socks, http] = client.forward_addrs[..] else { anyhow::bail!("four listeners") };
    // A UDP forward's flow is its connection: one request and its echo, 300 bytes each way.
    let user = wmproxy_tests::udp::user().await?;
    let echoed = wmproxy_tests::udp::request(&user, udp_forward, &[9u8; 300]).await?;
    ensure!(echoed == [9u8; 300], "the UDP echo came back wrong");

    // Through each: the file, byte for byte.
    let url = format!("http://{site}/");
    let via_socks = curl(&["--socks5-hostname", &socks.to_string(), &url]).await?;
    let via_http = curl(&["--proxy", &format!("http://{http}"), &url]).await?;
    let via_forward = curl(&["-H", "Host: site", &format!("http://{forward}/")]).await?;
    ensure!(via_socks == body && via_http == body && via_forward == body, "a body came back wrong");
    // A target the server's egress policy refuses (only 127.0.0.1/32 is allowed; 127.0.0.2 is
    // loopback too, refused by default).
    let refused = curl(&["--socks5-hostname", &socks.to_string(), "http://127.0.0.2:9/"]).await;
    ensure!(refused.is_err(), "the refused target was reached");

    let site = site.to_string();
    for listener in [forward, socks, http] {
        let line = access_line_to(&logs, listener, &site).await?;
        ensure!(line.level == Level::INFO && line.field("result") == "ok", "{line:?}");
        let bytes_out: u64 = line.field("bytes_out").parse()?;
        ensure!(bytes_out > 100_000, "bytes to the user: {line:?}");
    }
    let denied = access_line_to(&logs, socks, "127.0.0.2:9").await?;
    ensure!(denied.field("result").contains("not allowed"), "{denied:?}");
    let decided = logs.wait_for("the server's INFO line for the refusal", |e| {
        e.level == Level::INFO && e.message.contains("[egress] policy") && e.field("target") == "127.0.0.2:9"
    });
    decided.await?;

    let control = client.control_addr.context("control")?;
    let status: Value = serde_json::from_str(&get(control, "/status").await?)?;
    let listeners = status["listeners"].as_array().context("listeners in /status")?;
    ensure!(listeners.len() == 4, "{status}");
    let entry = |addr: SocketAddr| listeners.iter().find(|l| l["listen"] == addr.to_string()).cloned();
    let socks_entry = entry(socks).context("the SOCKS5 proxy in /status")?;
    ensure!(socks_entry["role"] == "proxy" && socks_entry["kind"] == "socks5", "{socks_entry}");
    ensure!(socks_entry["connections"] == 2 && socks_entry["refused"]["egress"] == 1, "{socks_entry}");
    ensure!(socks_entry["bytes_out"].as_u64().unwrap_or(0) > 100_000, "{socks_entry}");
    let forward_entry = entry(forward).context("the forward in /status")?;
    ensure!(forward_entry["role"] == "forward" && forward_entry["to"] == site, "{forward_entry}");
    let udp_entry = entry(udp_forward).context("the UDP forward in /status")?;
    ensure!(udp_entry["kind"] == "udp" && udp_entry["connections"] == 1, "{udp_entry}");
    ensure!(udp_entry["bytes_in"].as_u64() >= Some(300) && udp_entry["bytes_out"].as_u64() >= Some(300), "{udp_entry}");

    let metrics = parse_metrics(&get(control, "/metrics").await?)?;
    let labels = [("role", "proxy"), ("kind", "http"), ("listen", &*http.to_string())];
    let bytes = sample(&metrics, "wmproxy_client_listener_bytes_out_total", &labels).context("http bytes")?;
    ensure!(bytes > 100_000.0, "{bytes}");
    let socks_labels = [("kind", "socks5"), ("cause", "egress")];
    ensure!(sample(&metrics, "wmproxy_client_listener_refused_total", &socks_labels) == Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_proxies_are_logged_counted_and_listed() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|f| {
        f.proxies.push(ServerProxyFile::Socks5(ServerProxyFields {
            listen: ([127, 0, 0, 1], 0).into(),
            via: toml::Spanned::new(0..0, "traffic-office".to_owned()),
            username: None,
            password: None,
            handshake_timeout_secs: 5,
        }));
    })
    .await?;
    let body = vec![b'y'; 50_000];
    let (site, _) = file_server(body.clone()).await?;
    let mut config = server.client_config("traffic-office");
    config.server_proxies_egress = wmproxy_config::EgressPolicy::client(wmproxy_config::egress::EgressFile {
        allow: vec![ipnet::IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))],
        ..Default::default()
    });
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let socks = server.handle.proxy_addrs()[0];
    let got = curl(&["--socks5-hostname", &socks.to_string(), &format!("http://{site}/")]).await?;
    ensure!(got == body);

    let line = access_line_to(&logs, socks, &site.to_string()).await?;
    ensure!(line.field("result") == "ok" && line.field("bytes_out").parse::<u64>()? > 50_000, "{line:?}");
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: Value = serde_json::from_str(&status)?;
    let entry = &status["proxies"][0];
    ensure!(entry["to"] == "traffic-office" && entry["connections"] == 1, "{status}");
    let metrics = wmproxy_tests::metrics::scrape(&server).await?;
    let labels = [("role", "proxy"), ("listen", &*socks.to_string())];
    ensure!(sample(&metrics, "wmproxy_listener_connections_total", &labels) == Some(1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_half_way_reports_what_it_carried() -> Result<()> {
    let logs = Logs::capture();
    const LEN: usize = 1 << 20;
    let mut server = TestServer::start(|f| f.limits.drain_grace_secs = 0).await?;
    let mut config = server.client_config("traffic-cut");
    config.services.push(tcp_service("held", wmproxy_tests::backend::sends_then_holds(LEN).await?, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("held").await?;
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    user.write_all(b"hello").await?;
    let mut got = vec![0u8; LEN];
    user.read_exact(&mut got).await?;

    // The server's counters move while the connection is open.
    let counted = async || {
        let metrics = wmproxy_tests::metrics::scrape(&server).await?;
        let labels = [("client", "traffic-cut"), ("service", "held")];
        Ok(sample(&metrics, "wmproxy_service_bytes_out_total", &labels).unwrap_or(0.0) >= LEN as f64)
    };
    eventually_async("the bytes out counted while the connection is open", counted).await?;

    // The tunnel goes away under the connection: the client's line still has the bytes.
    let me = user.local_addr()?;
    server.stop().await?;
    // (Its `result` depends on a race: whether the server's stream end or its connection close
    // arrives first; the bytes do not.)
    let line = access_line(&logs, me).await?;
    let (bytes_in, bytes_out): (u64, u64) = (line.field("bytes_in").parse()?, line.field("bytes_out").parse()?);
    ensure!(bytes_in == 5 && bytes_out >= LEN as u64, "{line:?}");
    Ok(())
}
