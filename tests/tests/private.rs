//! Private services: a TCP service of client `home` published with no public port, reached by
//! client `office`'s `[[visitors]]` through the server (relay), and every way a visit is
//! refused: a wrong secret, a client name the service does not allow, an unknown service, a
//! public service, and a client that is offline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_config::Service;
use wmproxy_config::secret::Secret;
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tests::backend::{self, bulk_echo};
use wmproxy_tests::{TestClient, TestServer, control_api, control_call, init_tracing, name, tcp_service};

const SECRET: &str = "private-secret-1234";

/// A private TCP service `service` of `local`, with `secret` and `allow` as its restrictions.
fn private(service: &str, local: SocketAddr, secret: Option<&str>, allow: &[&str]) -> Service {
    wmproxy_tests::private(tcp_service(service, local, 0), secret, allow)
}

/// A visitor `visitor` of `service` of `client` through the server, listening on any loopback
/// port.
fn visitor(visitor: &str, client: &str, service: &str, secret: Option<&str>) -> Visitor {
    Visitor {
        name: name(visitor),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        client: name(client),
        service: name(service),
        secret_key: secret.map(Secret::new),
        mode: VisitMode::Relay,
        kind: wmproxy_wire::ServiceKind::Tcp,
    }
}

/// Connects to a visitor and expects the connection closed without a byte.
async fn assert_closed(addr: SocketAddr) -> Result<()> {
    let mut user = TcpStream::connect(addr).await?;
    let _ = user.write_all(b"hello?").await;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), user.read(&mut buf)).await;
    anyhow::ensure!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "expected a close at {addr}, got {read:?}");
    Ok(())
}

/// The JSON of `GET /status` at a client's control API.
async fn client_status(addr: SocketAddr) -> Result<Value> {
    let (code, body) = control_call(addr, Some(wmproxy_tests::CONTROL_TOKEN), "GET", "/status", "").await?;
    anyhow::ensure!(code == 200, "status {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The entry of `service` of `client` in the server's `/status`.
async fn service_status(server: &TestServer, client: &str, service: &str) -> Result<Value> {
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: Value = serde_json::from_str(&status)?;
    let entry = status["clients"].as_array().and_then(|c| c.iter().find(|c| c["name"] == client));
    let services = entry.context("the client in /status")?["services"].as_array().context("services")?;
    Ok(services.iter().find(|s| s["name"] == service).context("the service in /status")?.clone())
}

/// The refusal counts of the visitor listening at `listen`, from its client's `/status`.
async fn refusals(control: SocketAddr, listen: SocketAddr) -> Result<Value> {
    let status = client_status(control).await?;
    let listeners = status["listeners"].as_array().context("listeners")?;
    let mine = listeners.iter().find(|l| l["role"] == "visitor" && l["listen"] == listen.to_string());
    Ok(mine.context("the visitor's listener")?["refused"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_reaches_a_private_service_through_the_server_and_others_are_refused() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?;

    let mut home = server.client_config("home");
    home.services.push(private("db", echo, Some(SECRET), &[]));
    home.services.push(private("staff", echo, None, &["staff-laptop"]));
    home.services.push(tcp_service("public", echo, 0));
    let mut home = TestClient::start(home).await?;
    home.port_of("public").await?;

    let mut office = server.client_config("office");
    office.control = Some(control_api());
    office.visitors = vec![
        visitor("db", "home", "db", Some(SECRET)),
        visitor("wrong-secret", "home", "db", Some("not-the-secret")),
        visitor("no-secret", "home", "db", None),
        visitor("not-allowed", "home", "staff", None),
        visitor("unknown", "home", "nothing", Some(SECRET)),
        visitor("public", "home", "public", None),
        visitor("offline", "away", "db", Some(SECRET)),
    ];
    let mut office = TestClient::start(office).await?;
    office.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let control = office.control_addr.context("office's control API")?;
    let [db, wrong, none, not_allowed, unknown, public, offline] = office.forward_addrs[..] else {
        anyhow::bail!("seven visitors, got {:?}", office.forward_addrs);
    };

    // The private service has no public port: the server says so.
    let db_status = service_status(&server, "home", "db").await?;
    assert_eq!(db_status["outcome"], "private", "{db_status}");
    assert!(db_status["port"].is_null(), "{db_status}");

    // 8 MiB each way, checksummed, through the visitor.
    bulk_echo(TcpStream::connect(db).await?, 8 << 20, 7).await?;

    for (addr, cause) in [
        (wrong, "auth"),
        (none, "auth"),
        (not_allowed, "auth"),
        (unknown, "unreachable"),
        (public, "unreachable"),
        (offline, "no_tunnel"),
    ] {
        assert_closed(addr).await?;
        // Counted once the visit's task has ended, just after the connection closed.
        let what = format!("a refusal by {cause} at {addr}");
        wmproxy_tests::eventually_async(&what, async || Ok(refusals(control, addr).await?[cause] == 1)).await?;
    }

    // The server counted what it relayed for the visitor, and the refusals.
    let db_status = service_status(&server, "home", "db").await?;
    let visitors = db_status["visitors"].as_array().context("visitors of db")?;
    assert_eq!(visitors.len(), 1, "{db_status}");
    assert_eq!(visitors[0]["visitor"], "office");
    assert_eq!(visitors[0]["path"], "relayed");
    assert_eq!(visitors[0]["bytes_in"], 8 << 20, "{db_status}");
    assert_eq!(visitors[0]["bytes_out"], 8 << 20, "{db_status}");
    assert!(visitors[0]["rtt_ms"].is_f64(), "the relayed path's RTT: {db_status}");
    let (_, metrics) = server.control("GET", "/metrics", "").await?;
    let relayed = r#"wmproxy_visitor_relayed_bytes_in_total{visitor="office",client="home",service="db"} 8388608"#;
    assert!(metrics.contains(relayed), "{metrics}");
    assert!(metrics.contains(r#"wmproxy_refused_total{cause="visit_forbidden"} 3"#), "{metrics}");
    // The secret is nowhere in what the server shows.
    let (_, status) = server.control("GET", "/status", "").await?;
    assert!(!metrics.contains(SECRET) && !status.contains(SECRET));

    // Once home has left, the same visitor is told it is offline.
    home.stop().await?;
    assert_closed(db).await?;
    wmproxy_tests::eventually_async("an offline refusal", async || Ok(refusals(control, db).await?["no_tunnel"] == 1))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_visitor_connects_directly_and_the_server_relays_nothing() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut home = server.client_config("home");
    home.control = Some(control_api());
    home.services.push(private("db", echo, Some(SECRET), &[]));
    let mut home = TestClient::start(home).await?;
    home.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;

    let mut office = server.client_config("office");
    office.control = Some(control_api());
    office.visitors = vec![Visitor { mode: VisitMode::Auto, ..visitor("db", "home", "db", Some(SECRET)) }];
    let office = TestClient::start(office).await?;
    let control = office.control_addr.context("office's control API")?;
    wmproxy_tests::eventually_async("the visitor's path is direct", async || {
        let status = client_status(control).await?;
        Ok(status["visitors"][0]["path"] == "direct")
    })
    .await?;
    bulk_echo(TcpStream::connect(office.forward_addrs[0]).await?, 8 << 20, 9).await?;

    // Nothing went through the server: it arranged one rendezvous and relayed no byte.
    let db = service_status(&server, "home", "db").await?;
    let visitors = db["visitors"].as_array().context("visitors of db")?;
    assert_eq!(visitors[0]["path"], "direct", "{db}");
    assert_eq!((visitors[0]["connections"].as_u64(), visitors[0]["bytes_in"].as_u64()), (Some(0), Some(0)), "{db}");
    assert_eq!(db["bytes_in"], 0, "{db}");
    // The visitor counts what it carried.
    let office_status = client_status(control).await?;
    assert_eq!(office_status["visitors"][0]["bytes_in"], 8 << 20, "{office_status}");
    assert!(office_status["visitors"][0]["rtt_ms"].is_f64(), "{office_status}");
    // Home lists the visitor's direct connection.
    let home_status = client_status(home.control_addr.context("home's control API")?).await?;
    assert_eq!(home_status["direct_visitors"][0]["visitor"], "office", "{home_status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_visitors_reach_a_private_udp_service_through_the_server_and_directly() -> Result<()> {
    init_tracing();
    let echo = wmproxy_tests::udp::echo().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut home = server.client_config("home");
    home.services.push(wmproxy_tests::private(wmproxy_tests::udp::service("dns", echo, 0), Some(SECRET), &[]));
    let mut home = TestClient::start(home).await?;
    home.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;

    let mut office = server.client_config("office");
    office.control = Some(control_api());
    let udp_visitor =
        |mode| Visitor { kind: wmproxy_wire::ServiceKind::Udp, mode, ..visitor("dns", "home", "dns", Some(SECRET)) };
    office.visitors =
        vec![udp_visitor(VisitMode::Relay), Visitor { name: name("dns-direct"), ..udp_visitor(VisitMode::Auto) }];
    let office = TestClient::start(office).await?;
    let control = office.control_addr.context("office's control API")?;
    let [relayed, direct] = office.forward_addrs[..] else { anyhow::bail!("two visitors") };

    // Through the server: an echo, and the server counts the visitor's flow.
    let user = wmproxy_tests::udp::user().await?;
    wmproxy_tests::udp::round_trip(&user, relayed, b"through the server", |_| Ok(())).await?;
    let dns = service_status(&server, "home", "dns").await?;
    assert_eq!(dns["outcome"], "private", "{dns}");
    assert_eq!(dns["visitors"][0]["connections"], 1, "{dns}");
    let relayed_bytes = b"through the server".len();
    assert_eq!(
        (dns["visitors"][0]["bytes_in"].as_u64(), dns["visitors"][0]["bytes_out"].as_u64()),
        (Some(relayed_bytes as u64), Some(relayed_bytes as u64)),
        "{dns}"
    );

    // Directly: 500 packets paced at one a millisecond, at least 99 % back.
    wmproxy_tests::eventually_async("the UDP visitor's path is direct", async || {
        Ok(client_status(control).await?["visitors"][1]["path"] == "direct")
    })
    .await?;
    let user = wmproxy_tests::udp::user().await?;
    let back = wmproxy_tests::udp::paced_echo(&user, direct, (500, 1200), Duration::from_millis(1)).await?;
    assert!(back >= 495, "{back} of 500 packets came back");
    let dns = service_status(&server, "home", "dns").await?;
    assert_eq!(dns["visitors"][0]["connections"], 1, "a direct flow went through the server: {dns}");
    Ok(())
}
