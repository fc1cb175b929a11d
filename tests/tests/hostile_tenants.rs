//! Between tenants.
//!
//! Host names: a host name belongs to the first client that claims it, with every path under
//! it, on the vhost and HTTPS ports alike; a subdomain is a host name like any other and needs
//! the client's `allow_domains`; routes are claimed once; each registration is capped (host
//! names and locations per service, routes per client) and its locations are checked. The
//! other tenant is a hand-driven client (`raw`), so it can ask for what a client's config would
//! never let it write.
//!
//! Names: a client name has one machine. A second machine is refused while the first answers;
//! the same machine (its resume secret) replaces its session at once; the shared token has a
//! cap on live names.

use std::net::SocketAddr;

use anyhow::{Result, bail, ensure};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::HttpRoute;
use wmproxy_config::Secret;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::proxy::{http_tagged, keep_alive_request};
use wmproxy_tests::{DEADLINE, backend, echo_client};
use wmproxy_tests::{TOKEN, TestClient, TestServer, client_entry, http_service, init_tracing, name, raw};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_tunnel::{datastream, probe};
use wmproxy_wire::routes::{MAX_DOMAINS_PER_SERVICE, MAX_LOCATIONS_PER_SERVICE, MAX_ROUTES_PER_CLIENT};
use wmproxy_wire::{ControlReply, ControlRequest, HttpSpec, RegisterOutcome, ServiceKind, ServiceSpec};
use wmproxy_wire::{HelloReply, OpenStream, RejectReason, ResumeSecret};

/// A hand-driven client, authenticated with the shared token.
struct Tenant {
    _endpoint: quinn::Endpoint,
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Tenant {
    async fn join(server: &TestServer, client: &str) -> Result<Self> {
        let (_endpoint, _conn, send, recv) = raw::authenticated(server, client, TOKEN).await?;
        Ok(Self { _endpoint, _conn, send, recv })
    }

    /// Registers `services` (in place of those registered before) and returns their outcomes.
    async fn register(&mut self, services: Vec<ServiceSpec>) -> Result<Vec<RegisterOutcome>> {
        write_frame(&mut self.send, &ControlRequest::Register { services }).await?;
        let ControlReply::Registered { results } = read_frame(&mut self.recv).await? else { bail!("unexpected reply") };
        Ok(results.into_iter().map(|r| r.outcome).collect())
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

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
    ServiceSpec { name: name(service), kind, remote_port: 0, group: None, http: Some(http) }
}

fn http(service: &str, domains: &[&str], locations: &[&str]) -> ServiceSpec {
    routes(service, ServiceKind::Http, domains, None, locations)
}

/// The status and body of `GET path` with `Host: host` on the vhost port.
async fn get(vhost: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(vhost).await?;
    keep_alive_request(&mut conn, host, path).await
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

// One name, one machine.

/// The client's status is `Connecting` with an error that contains `says`.
fn refused_with(says: &'static str) -> impl Fn(&ClientStatus) -> bool {
    move |s| matches!(s, ClientStatus::Connecting { last_error: Some(e), .. } if e.contains(says))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_cannot_take_a_live_clients_name_and_takes_over_when_it_leaves() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (mut home, public) = echo_client(&server, "home").await?;

    // Another machine with the shared token and the same name: the live client answers the
    // server's ping, so the newcomer is refused and keeps trying.
    let mut impostor = TestClient::start(server.client_config("home")).await?;
    impostor.wait_for("the second machine refused", refused_with("another machine is connected")).await?;
    backend::assert_echo(public, 4096, 1).await?;
    ensure!(matches!(&*home.status.borrow(), ClientStatus::Connected { .. }), "the first was replaced");
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "name_in_use")]);
    ensure!(refused >= Some(1.0), "name_in_use refusals: {refused:?}");

    // When the first machine leaves, the name is free and the second comes in.
    home.stop().await?;
    impostor.wait_for("the second machine connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    ensure!(server.handle.clients() == ["home"], "{:?}", server.handle.clients());
    Ok(())
}

/// Answers the server's pings on `conn`, as a live client does.
fn answer_pings(conn: quinn::Connection) {
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            if let Some((send, _, OpenStream::Ping)) = datastream::read_header(send, recv, DEADLINE).await {
                probe::answer(send).await;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_back_with_its_resume_secret_replaces_its_session_at_once() -> Result<()> {
    init_tracing();
    // One client place: a replacing session takes the place of the one it replaces.
    let server = TestServer::start(|f| f.limits.max_clients = 1).await?;
    let (_old_endpoint, old) = raw::connect(&server).await?;
    let (HelloReply::Welcome { resume, .. }, _send, _recv) = raw::hello(&old, "laptop", TOKEN, None).await? else {
        bail!("not welcomed");
    };
    answer_pings(old.clone());

    // A wrong secret is no secret: the live session is asked, answers, and keeps its name.
    let (_endpoint, other) = raw::connect(&server).await?;
    let (reply, ..) = raw::hello(&other, "laptop", TOKEN, Some(ResumeSecret([0; 32]))).await?;
    ensure!(reply == HelloReply::Reject(RejectReason::NameInUse), "{reply:?}");

    // The same machine on a new connection (a new address after a network change), while the
    // old one still answers: its secret replaces the old session without asking it.
    let (_new_endpoint, new) = raw::connect(&server).await?;
    let (reply, _send, _recv) = raw::hello(&new, "laptop", TOKEN, Some(resume)).await?;
    ensure!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    let closed = tokio::time::timeout(DEADLINE, old.closed()).await?;
    ensure!(closed.to_string().contains("replaced by a newer connection"), "{closed}");

    // A session that no longer answers (this one serves no streams: a hung client, or one
    // that restarted and lost its secret) is replaced once the ping times out.
    let (_third_endpoint, third) = raw::connect(&server).await?;
    let (reply, _send, _recv) = raw::hello(&third, "laptop", TOKEN, None).await?;
    ensure!(matches!(reply, HelloReply::Welcome { .. }), "{reply:?}");
    let closed = tokio::time::timeout(DEADLINE, new.closed()).await?;
    ensure!(closed.to_string().contains("replaced by a newer connection"), "{closed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_token_has_a_cap_on_live_names() -> Result<()> {
    init_tracing();
    const OFFICE_TOKEN: &str = "office-token-secret-42";
    let server = TestServer::start(|f| {
        f.limits.max_shared_clients = 2;
        f.clients.push(client_entry("office", OFFICE_TOKEN));
    })
    .await?;
    let (mut first, _) = echo_client(&server, "first").await?;
    let (_second, _) = echo_client(&server, "second").await?;
    let mut third = TestClient::start(server.client_config("third")).await?;
    third.wait_for("the third shared name refused", refused_with("names for the shared token")).await?;
    // A client with a token of its own is not one of them.
    let mut office = server.client_config("office");
    office.token = Secret::new(OFFICE_TOKEN);
    let mut office = TestClient::start(office).await?;
    office.wait_for("the named client connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;

    first.stop().await?;
    third.wait_for("the third connected once a name is free", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "shared_token_full")]);
    ensure!(refused >= Some(1.0), "shared_token_full refusals: {refused:?}");
    Ok(())
}
