//! `/status` names a vhost service or an HTTP group by its host names and paths, not by the
//! port alone, on both ends; the server logs them when it publishes the service (item 4).

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use wmproxy_config::HttpRoute;
use wmproxy_tests::logs::Logs;
use wmproxy_tests::proxy::http_tagged;
use wmproxy_tests::{TestClient, TestServer, control_call, groups};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_services_and_groups_show_their_names_and_paths() -> Result<()> {
    let logs = Logs::capture();
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some(([127, 0, 0, 1], 0).into());
        f.vhost.subdomain_host = Some("tunnel.example".into());
        f.allow_domains = vec!["*.status.example".into(), "*.tunnel.example".into()];
        f.groups.push(groups::http_group("site", "www.status.example"));
    })
    .await?;
    let site = http_tagged("site").await?;
    let route = HttpRoute {
        custom_domains: vec!["app.status.example".into()],
        subdomain: Some("blog".into()),
        locations: vec!["/api".into()],
        ..HttpRoute::default()
    };
    let mut config = server.client_config("status-home");
    config.services.push(wmproxy_tests::http_service("app", site, route));
    config.control = Some(wmproxy_tests::control_api());
    let mut client = TestClient::start(config).await?;
    client.port_of("app").await?;

    let expected = json!({
        "domains": ["app.status.example"], "subdomain": "blog", "locations": ["/api"], "name": "app", "outcome": "ok"
    });
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: Value = serde_json::from_str(&status)?;
    let clients = status["clients"].as_array().context("clients")?;
    let home = clients.iter().find(|c| c["name"] == "status-home").context("the client")?;
    let app = &home["services"][0];
    for (key, want) in expected.as_object().context("object")? {
        ensure!(&app[key] == want, "server /status: {key} is {} in {app}", app[key]);
    }
    let group = status["groups"].as_array().and_then(|g| g.iter().find(|g| g["name"] == "site")).context("group")?;
    ensure!(group["domains"] == json!(["www.status.example"]), "{group}");

    let addr = client.control_addr.context("the client's control API")?;
    let (_, status) = control_call(addr, Some(wmproxy_tests::CONTROL_TOKEN), "GET", "/status", "").await?;
    let status: Value = serde_json::from_str(&status)?;
    let app = &status["services"][0];
    for (key, want) in expected.as_object().context("object")? {
        ensure!(&app[key] == want, "client /status: {key} is {} in {app}", app[key]);
    }

    let published =
        logs.wait_for("the published line", |e| e.message == "service published" && e.field("service") == "app");
    let published = published.await?;
    ensure!(published.field("domains").contains("app.status.example"), "{published:?}");
    ensure!(
        published.field("subdomain").contains("blog") && published.field("locations").contains("/api"),
        "{published:?}"
    );
    Ok(())
}
