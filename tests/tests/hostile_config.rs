//! No config value panics the process: every number at either end of its documented range
//! gives a server and a client that run and carry a connection (the values outside are refused
//! at load, which `config/tests/ranges.rs` shows for any value).

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use tokio::net::TcpStream;
use wmproxy_config::ranges as r;
use wmproxy_tests::proxy::keep_alive_request;
use wmproxy_tests::{TestClient, TestServer, backend, init_tracing};

/// (table, key, range) of the server's numbers.
const SERVER: &[(&str, &str, std::ops::RangeInclusive<u64>)] = &[
    ("limits", "max_clients", r::MAX_CLIENTS),
    ("limits", "max_shared_clients", r::MAX_CLIENTS),
    ("limits", "max_silent_connections", r::MAX_CLIENTS),
    ("limits", "max_connections_per_user", r::MAX_STREAMS),
    ("limits", "max_unauthenticated", r::MAX_CLIENTS),
    ("limits", "max_unauthenticated_per_address", r::MAX_CLIENTS),
    ("limits", "auth_timeout_secs", r::TIMEOUT_SECS),
    ("limits", "max_streams_per_client", r::MAX_STREAMS),
    ("limits", "handshake_timeout_secs", r::TIMEOUT_SECS),
    ("limits", "stream_open_timeout_secs", r::TIMEOUT_SECS),
    ("limits", "max_udp_flows", r::MAX_STREAMS),
    ("limits", "max_udp_flows_per_client", r::MAX_STREAMS),
    ("limits", "udp_flow_idle_timeout_secs", r::UDP_IDLE_SECS),
    ("limits", "drain_grace_secs", r::DRAIN_GRACE_SECS),
    ("vhost", "header_read_timeout_secs", r::TIMEOUT_SECS),
    ("vhost", "body_timeout_secs", r::TIMEOUT_SECS),
    ("vhost", "max_header_bytes", r::MAX_HEADER_BYTES),
    ("vhost", "user_requests_per_minute", r::REQUESTS_PER_MINUTE),
    ("vhost", "user_request_burst", r::REQUEST_BURST),
    ("group", "max_fails", r::MAX_FAILS),
    ("group", "fail_timeout_secs", r::FAIL_TIMEOUT_SECS),
    ("group", "retries", r::RETRIES),
    ("proxy", "handshake_timeout_secs", r::TIMEOUT_SECS),
];

/// (table, key, range) of the client's numbers.
const CLIENT: &[(&str, &str, std::ops::RangeInclusive<u64>)] = &[
    ("limits", "max_udp_flows", r::MAX_STREAMS),
    ("limits", "udp_flow_idle_timeout_secs", r::UDP_IDLE_SECS),
    ("member", "weight", r::WEIGHT),
    ("check", "interval_ms", r::CHECK_INTERVAL_MS),
    ("check", "timeout_ms", r::CHECK_TIMEOUT_MS),
    ("check", "rise", r::RISE_FALL),
    ("check", "fall", r::RISE_FALL),
    ("proxy", "handshake_timeout_secs", r::TIMEOUT_SECS),
];

/// A server file with a vhost port, a group and a proxy, and `key = value` in `table`.
fn server_file(state: &std::path::Path, group_port: u16, (table, line): (&str, &str)) -> String {
    let at = |t: &str| if t == table { line } else { "" };
    format!(
        "bind = \"127.0.0.1:0\"\npublic_bind = \"127.0.0.1\"\nstate_dir = \"{}\"\ntoken = \"{}\"\n\
         allow_ports = [\"1024-65535\"]\n[vhost]\nhttp_bind = \"127.0.0.1:0\"\n{}\n[limits]\n{}\n\
         [[groups]]\nname = \"web\"\nkey = \"{}\"\nremote_port = {group_port}\n{}\n\
         [[proxies]]\ntype = \"socks5\"\nlisten = \"127.0.0.1:0\"\nvia = \"home\"\n{}\n",
        state.display(),
        wmproxy_tests::TOKEN,
        at("vhost"),
        at("limits"),
        wmproxy_tests::groups::GROUP_KEY,
        at("group"),
        at("proxy"),
    )
}

/// A client file for `server` with an echo service, a group member with an HTTP check and a
/// proxy, and `key = value` in `table`.
fn client_file(server: &TestServer, echo: SocketAddr, (table, line): (&str, &str)) -> String {
    let at = |t: &str| if t == table { line } else { "" };
    format!(
        "{}\n[limits]\n{}\n[[services]]\nname = \"echo\"\nlocal_addr = \"{echo}\"\n\
         [[services]]\nname = \"web-1\"\nlocal_addr = \"{echo}\"\ngroup = \"web\"\ngroup_key = \"{}\"\n{}\n\
         [services.health_check]\ntype = \"http\"\n{}\n\
         [[proxies]]\ntype = \"socks5\"\nlisten = \"127.0.0.1:0\"\n{}\n",
        server.client_toml("home"),
        at("limits"),
        wmproxy_tests::groups::GROUP_KEY,
        at("member"),
        at("check"),
        at("proxy"),
    )
}

/// Starts a server and a client with `server_line` and `client_line` in place, and checks that
/// a connection goes through and the vhost answers.
async fn runs(server_line: (&str, &str), client_line: (&str, &str)) -> Result<()> {
    let state = tempfile::tempdir()?;
    let group_port = backend::dead_port().await?.port();
    let server_path = state.path().join("server.toml");
    std::fs::write(&server_path, server_file(state.path(), group_port, server_line))?;
    let mut server = TestServer::start_from(&server_path).await?;
    let echo = backend::echo().await?;
    let client_path = state.path().join("client.toml");
    std::fs::write(&client_path, client_file(&server, echo, client_line))?;
    let (mut client, _) = TestClient::start_from(&client_path).await?;
    let port = client.port_of("echo").await?;
    backend::assert_echo(SocketAddr::from(([127, 0, 0, 1], port)), 4096, 1).await?;
    // With `max_connections_per_user = 1`, the echo's connection must be gone first (its relay
    // ends once its last bytes are acknowledged, a moment after the user saw them).
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    wmproxy_tests::eventually("the echo connection gone", || server.handle.open_connections_of(loopback) == 0).await?;
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let (status, _) = keep_alive_request(&mut TcpStream::connect(vhost).await?, "nobody.example", "/").await?;
    ensure!(status == 404, "the vhost answered {status}");
    client.stop().await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_number_at_either_end_of_its_range_runs() -> Result<()> {
    init_tracing();
    for (table, key, range) in SERVER {
        for value in [*range.start(), *range.end()] {
            let mut line = format!("{key} = {value}");
            if *key == "fail_timeout_secs" && value == 0 {
                line.push_str("\nmax_fails = 0"); // a zero window only with passive checks off
            }
            runs((table, &line), ("", "")).await.with_context(|| format!("server {table}.{line}"))?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_number_at_either_end_of_its_range_runs() -> Result<()> {
    init_tracing();
    for (table, key, range) in CLIENT {
        for value in [*range.start(), *range.end()] {
            let line = format!("{key} = {value}");
            runs(("", ""), (table, &line)).await.with_context(|| format!("client {table}.{line}"))?;
        }
    }
    Ok(())
}
