//! A host name has one owner.

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use wmproxy_config::HttpRoute;
use wmproxy_tests::proxy::http_tagged;
use wmproxy_tests::{TestClient, TestServer, http_service, init_tracing, name};
use wmproxy_wire::routes::{MAX_DOMAINS_PER_SERVICE, MAX_LOCATIONS_PER_SERVICE, MAX_ROUTES_PER_CLIENT};
use wmproxy_wire::{HttpSpec, RegisterOutcome, ServiceKind, ServiceSpec};

use super::{Tenant, get, strings};

/// A service of `kind` named `service` asking for `domains` (and `subdomain`) at `locations`.
fn routes(
    service: &str,
    kind: ServiceKind,
    domains: &[&str],
    subdomain: Option<&str>,
    locations: &[&str],
) -> ServiceSpec {
    let http = HttpSpec {
        custom_domains: strings(domains),
        subdomain: subdomain.map(str::to_owned),
        locations: strings(locations),
        host_header_rewrite: None,
        basic_auth: None,
    };
    let (group, http, bandwidth_limit, private) = (None, Some(http), None, None);
    ServiceSpec { name: name(service), kind, remote_port: 0, group, http, bandwidth_limit, private }
}

fn http(service: &str, domains: &[&str], locations: &[&str]) -> ServiceSpec {
    routes(service, ServiceKind::Http, domains, None, locations)
}

async fn vhost_server(subdomain_host: Option<&str>, allow_domains: &[&str]) -> Result<TestServer> {
    TestServer::start(|f| {
        f.vhost.http_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.vhost.https_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.vhost.subdomain_host = subdomain_host.map(str::to_owned);
        f.allow_domains = strings(allow_domains);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_its_first_clients_at_every_path_and_on_both_ports() -> Result<()> {
    init_tracing();
    let server = vhost_server(None, &["*.example.com"]).await?;
    let vhost = server.handle.vhost_addr().unwrap_or_else(|| panic!("a vhost port"));
    let mut config = server.client_config("alice");
    let route = HttpRoute { custom_domains: strings(&["shop.example.com"]), ..HttpRoute::default() };
    config.services = vec![http_service("shop", http_tagged("alice").await?, route)];
    let mut alice = TestClient::start(config).await?;
    alice.port_of("shop").await?;

    // Mallory asks for a path under Alice's host, the same host on the HTTPS port, a WebSocket
    // bridge under it, and a free host together with Alice's: each is refused with the host.
    let mut mallory = Tenant::join(&server, "mallory").await?;
    let taken = RegisterOutcome::HostTaken("shop.example.com".into());
    let outcomes = mallory
        .register(vec![
            http("api", &["shop.example.com"], &["/api"]),
            routes("tls", ServiceKind::Https, &["shop.example.com"], None, &[]),
            routes("ws", ServiceKind::Ws, &["shop.example.com"], None, &["/ws"]),
            http("both", &["free.example.com", "shop.example.com"], &[]),
        ])
        .await?;
    ensure!(outcomes.iter().all(|o| *o == taken), "{outcomes:?}");
    println!("refused: {taken}");

    // Alice still answers every path of her host, and the refused claim took nothing.
    for path in ["/", "/api", "/api/orders", "/ws"] {
        let (status, body) = get(vhost, "shop.example.com", path).await?;
        ensure!(status == 200 && body.contains("alice"), "{path}: {status} {body}");
    }
    let (status, _) = get(vhost, "free.example.com", "/").await?;
    ensure!(status == 404, "a refused claim left a route behind: {status}");

    // When Alice leaves, the name is free for whoever claims it next.
    alice.stop().await?;
    wmproxy_tests::eventually("alice's session to end", || !server.handle.clients().contains(&"alice".into())).await?;
    let outcomes = mallory.register(vec![http("api", &["shop.example.com"], &["/api"])]).await?;
    ensure!(matches!(outcomes[..], [RegisterOutcome::Ok { .. }]), "{outcomes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subdomain_needs_the_clients_allow_domains_and_has_one_owner() -> Result<()> {
    init_tracing();
    let server = vhost_server(Some("tunnel.example.net"), &["mine.tunnel.example.net"]).await?;
    let mut first = Tenant::join(&server, "first").await?;
    let outcomes = first
        .register(vec![
            routes("mine", ServiceKind::Http, &[], Some("mine"), &[]),
            routes("yours", ServiceKind::Http, &[], Some("yours"), &[]),
            routes("wild", ServiceKind::Http, &[], Some("*"), &[]),
        ])
        .await?;
    ensure!(matches!(outcomes[0], RegisterOutcome::Ok { .. }), "{outcomes:?}");
    ensure!(outcomes[1] == RegisterOutcome::DomainNotAllowed("yours.tunnel.example.net".into()), "{outcomes:?}");
    ensure!(matches!(&outcomes[2], RegisterOutcome::Invalid(m) if m.contains("not a host name")), "{outcomes:?}");

    let mut second = Tenant::join(&server, "second").await?;
    let outcomes = second.register(vec![routes("mine", ServiceKind::Http, &[], Some("mine"), &["/x"])]).await?;
    ensure!(outcomes == [RegisterOutcome::HostTaken("mine.tunnel.example.net".into())], "{outcomes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_claimed_once_and_every_registration_is_capped() -> Result<()> {
    init_tracing();
    let server = vhost_server(None, &["*.example.com"]).await?;
    let vhost = server.handle.vhost_addr().unwrap_or_else(|| panic!("a vhost port"));
    let mut tenant = Tenant::join(&server, "tenant").await?;

    // Repeats in one service are one route; the same route in a second service is refused.
    let outcomes = tenant
        .register(vec![
            http("twice", &["a.example.com", "a.example.com"], &["/", "/"]),
            http("again", &["a.example.com"], &["/"]),
            http("deeper", &["a.example.com"], &["/api"]),
        ])
        .await?;
    ensure!(matches!(outcomes[0], RegisterOutcome::Ok { .. }), "{outcomes:?}");
    ensure!(outcomes[1] == RegisterOutcome::RouteTaken("a.example.com/".into()), "{outcomes:?}");
    ensure!(matches!(outcomes[2], RegisterOutcome::Ok { .. }), "its own host, another path: {outcomes:?}");

    // Locations start with `/` and carry no spaces; a service has a bounded number of names and
    // locations.
    let hosts: Vec<String> = (0..=MAX_DOMAINS_PER_SERVICE).map(|i| format!("h{i}.example.com")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let paths: Vec<String> = (0..=MAX_LOCATIONS_PER_SERVICE).map(|i| format!("/p{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let outcomes = tenant
        .register(vec![
            http("relative", &["b.example.com"], &["api"]),
            http("spaced", &["b.example.com"], &["/a b"]),
            http("names", &hosts, &["/"]),
            http("paths", &["b.example.com"], &paths),
        ])
        .await?;
    let invalid = |o: &RegisterOutcome, says: &str| matches!(o, RegisterOutcome::Invalid(m) if m.contains(says));
    ensure!(invalid(&outcomes[0], "does not start with `/`"), "{outcomes:?}");
    ensure!(invalid(&outcomes[1], "space or control character"), "{outcomes:?}");
    ensure!(invalid(&outcomes[2], "host names in one service"), "{outcomes:?}");
    ensure!(invalid(&outcomes[3], "locations in one service"), "{outcomes:?}");
    let (status, _) = get(vhost, "a.example.com", "/").await?;
    ensure!(status == 404, "re-registering withdrew the first services: {status}");

    // A client holds at most MAX_ROUTES_PER_CLIENT routes, over all its services.
    let per_service = MAX_DOMAINS_PER_SERVICE * (MAX_LOCATIONS_PER_SERVICE / 2);
    let full = MAX_ROUTES_PER_CLIENT / per_service;
    let mut services = Vec::new();
    for s in 0..=full {
        let hosts: Vec<String> = (0..MAX_DOMAINS_PER_SERVICE).map(|i| format!("h{i}.s{s}.example.com")).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        services.push(http(&format!("s{s}"), &hosts, &paths[..MAX_LOCATIONS_PER_SERVICE / 2]));
    }
    let outcomes = tenant.register(services).await?;
    ensure!(outcomes[..full].iter().all(|o| matches!(o, RegisterOutcome::Ok { .. })), "{outcomes:?}");
    ensure!(invalid(&outcomes[full], &format!("more than {MAX_ROUTES_PER_CLIENT} routes")), "{:?}", outcomes[full]);
    Ok(())
}
