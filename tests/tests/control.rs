//! The server's control API: the bearer token, masked secrets, status, validation without
//! applying, unknown paths, the OpenAPI files and a graceful stop.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use wmproxy_client::ClientStatus;
use wmproxy_config::Secret;
use wmproxy_tests::{CONTROL_TOKEN, TOKEN, TestClient, TestServer, client_entry, control_call, init_tracing};

const OFFICE_TOKEN: &str = "office-token-secret-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_wants_its_token_and_never_shows_a_secret() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| {
        f.clients.push(client_entry("office", OFFICE_TOKEN));
    })
    .await?;
    let addr = server.handle.control_addr().context("control API")?;
    ensure!(addr.ip().is_loopback());
    for token in [None, Some("wrong-token-0000000000"), Some(&CONTROL_TOKEN[..CONTROL_TOKEN.len() - 1])] {
        let (status, body) = control_call(addr, token, "GET", "/now", "").await?;
        ensure!(status == 401 && !body.contains("MASKED"), "{token:?}: {status} {body}");
    }

    let (status, now) = server.control("GET", "/now", "").await?;
    ensure!(status == 200, "{status} {now}");
    let parsed: Value = serde_json::from_str(&now)?;
    let office = parsed["clients"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "office"));
    ensure!(office.is_some_and(|office| office["token"] == "MASKED"), "{now}");
    for secret in [TOKEN, CONTROL_TOKEN, OFFICE_TOKEN] {
        ensure!(!now.contains(secret), "/now shows a secret: {now}");
    }

    let echo = wmproxy_tests::backend::echo().await?;
    let mut config = server.client_config("home");
    config.services.push(wmproxy_tests::tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;
    let (status, body) = server.control("GET", "/status", "").await?;
    ensure!(status == 200, "{status} {body}");
    let parsed: Value = serde_json::from_str(&body)?;
    let home = &parsed["clients"][0];
    ensure!(home["name"] == "home" && home["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{body}");
    ensure!(home["services"][0]["outcome"] == "ok" && home["services"][0]["port"] == port, "{body}");
    ensure!(!body.contains(TOKEN), "{body}");

    let (status, body) = server.control("GET", "/no-such-thing", "").await?;
    ensure!(status == 404, "{status} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapt_reports_errors_with_key_and_line_and_applies_nothing() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (status, body) = server.control("POST", "/adapt", "token = \"long-enough-token\"\nbnid = 1\n").await?;
    ensure!(status == 422 && body.contains("bnid") && body.contains("line 2"), "unknown key: {status} {body}");
    let (status, body) = server.control("POST", "/adapt", "token = \"long-enough-token\"\n[limits\n").await?;
    ensure!(status == 422 && body.contains("line 2"), "syntax error: {status} {body}");
    let (status, body) = server.control("POST", "/adapt", "token = \"long-enough-token\"\n").await?;
    ensure!(status == 200 && body.contains("\"valid\": true"), "a valid config: {status} {body}");
    // Started without a file, an empty body has nothing to check.
    let (status, _) = server.control("POST", "/adapt", "").await?;
    ensure!(status == 400);
    // Nothing was applied: the running config is the one it started with.
    let (_, now) = server.control("GET", "/now", "").await?;
    ensure!(serde_json::from_str::<Value>(&now)?["limits"]["max_clients"] == 256, "{now}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_through_the_api_ends_the_server_and_its_client_sees_it_go() -> Result<()> {
    init_tracing();
    let mut server = TestServer::start(|_| {}).await?;
    let mut client = TestClient::start(server.client_config("home")).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let (status, body) = server.control("POST", "/stop", "").await?;
    ensure!(status == 200 && body.contains("stopping"), "{status} {body}");
    server.wait_stopped().await?;
    client.wait_for("reconnecting", |s| matches!(s, ClientStatus::Connecting { .. })).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_known_traffic() -> Result<()> {
    use wmproxy_client::ClientError;
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_client, public) = wmproxy_tests::echo_client(&server, "home").await?;
    const SENT: usize = 300_000;
    wmproxy_tests::backend::assert_echo(public, SENT, 7).await?;
    let mut intruder = server.client_config("intruder");
    intruder.servers[0].token = Secret::new("not-the-right-token");
    let refused = TestClient::start(intruder).await?.finished().await?;
    ensure!(matches!(refused, Err(ClientError::Rejected(_))), "{refused:?}");

    let (_, text) = server.control("GET", "/metrics", "").await?;
    let scrape = wmproxy_tests::metrics::scrape(&server).await?;
    let service = [("client", "home"), ("service", "echo")];
    let get =
        |name: &str, labels: &[(&str, &str)]| wmproxy_tests::metrics::sample(&scrape, name, labels).unwrap_or(-1.0);
    ensure!(get("wmproxy_service_bytes_in_total", &service) >= SENT as f64, "{text}");
    ensure!(get("wmproxy_service_bytes_out_total", &service) >= SENT as f64, "{text}");
    ensure!(get("wmproxy_streams_opened_total", &service) >= 1.0, "{text}");
    ensure!(get("wmproxy_tunnels_accepted_total", &[]) >= 1.0, "{text}");
    ensure!(get("wmproxy_tunnels_active", &[]) == 1.0, "{text}");
    ensure!(get("wmproxy_auth_failures_total", &[]) >= 1.0, "{text}");
    ensure!(get("wmproxy_udp_datagrams_dropped_total", &[("cause", "malformed")]) == 0.0, "{text}");
    ensure!(!text.contains(TOKEN) && !text.contains(CONTROL_TOKEN));
    // /status shows the same traffic per service.
    let (_, status) = server.control("GET", "/status", "").await?;
    let echo = &serde_json::from_str::<Value>(&status)?["clients"][0]["services"][0];
    let at_least = |key: &str, n: u64| echo[key].as_u64().is_some_and(|v| v >= n);
    ensure!(at_least("bytes_in", SENT as u64) && at_least("bytes_out", SENT as u64), "{status}");
    ensure!(at_least("connections", 1) && echo["active"] == 0 && echo["name"] == "echo", "{status}");
    Ok(())
}

/// Every route each end serves is in its OpenAPI file and the file lists no other; and every
/// documented `GET` of the server answers, with the token, something other than `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_files_document_every_route_and_no_other() -> Result<()> {
    init_tracing();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi");
    let server_doc = std::fs::read_to_string(root.join("server.json"))?;
    let client_doc = std::fs::read_to_string(root.join("client.json"))?;
    let checked = wmproxy_ops::control::check_openapi(wmproxy_server::CONTROL_ROUTES, &server_doc);
    ensure!(checked.is_ok(), "docs/openapi/server.json: {checked:?}");
    let checked = wmproxy_ops::control::check_openapi(wmproxy_client::CONTROL_ROUTES, &client_doc);
    ensure!(checked.is_ok(), "docs/openapi/client.json: {checked:?}");

    let server = TestServer::start(|_| {}).await?;
    let doc: Value = serde_json::from_str(&server_doc)?;
    let paths = doc["paths"].as_object().context("paths")?;
    for (path, _) in paths.iter().filter(|(_, item)| item.get("get").is_some()) {
        let (status, body) = server.control("GET", path, "").await?;
        ensure!(status == 200, "GET {path}: {status} {body}");
    }
    let (status, _) = server.control("GET", "/not-documented", "").await?;
    ensure!(status == 404, "an undocumented path: {status}");
    Ok(())
}
