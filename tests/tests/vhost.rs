//! The HTTP virtual-host port: routing by each request's own Host (keep-alive), wildcards and
//! path prefixes, forwarded headers, and bad input.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use anyhow::{Result, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_config::{Exposure, HttpRoute, Publish, Service};
use wmproxy_tests::proxy::{HyperConnection, curl, http_tagged, keep_alive_request};
use wmproxy_tests::tls::TestCert;
use wmproxy_tests::{TestClient, TestServer, init_tracing};
use wmproxy_wire::RegisterOutcome;

fn http_service(name: &str, local: SocketAddr, domains: &[&str], locations: &[&str]) -> Service {
    let route = HttpRoute {
        custom_domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        locations: locations.iter().map(|l| (*l).to_owned()).collect(),
        ..HttpRoute::default()
    };
    wmproxy_tests::http_service(name, local, route)
}

/// A server with a vhost port that lets the shared token claim `*.example.com` and
/// `*.wild.example`, and a client with `services`; returns them and the vhost address.
async fn setup(services: Vec<Service>) -> Result<(TestServer, TestClient, SocketAddr)> {
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some("127.0.0.1:0".parse().unwrap());
        f.vhost.header_read_timeout_secs = 1;
        f.allow_domains = vec!["*.example.com".into(), "*.wild.example".into()];
    })
    .await?;
    let vhost = server.handle.vhost_addr().unwrap();
    let mut config = server.client_config("home");
    config.services = services;
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    Ok((server, client, vhost))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_port_each_request_routed_by_its_own_host() -> Result<()> {
    init_tracing();
    let (a, b) = (http_tagged("a").await?, http_tagged("b").await?);
    let services = vec![http_service("a", a, &["a.example.com"], &[]), http_service("b", b, &["b.example.com"], &[])];
    let (server, _c, vhost) = setup(services).await?;

    // Keep-alive (hyper's client): one connection, requests for both hosts, alternating.
    let mut conn = HyperConnection::connect(vhost).await?;
    for (host, tag) in [("a.example.com", "a"), ("b.example.com", "b"), ("A.Example.com:80", "a")] {
        let (status, body) = conn.get(host, "/x").await?;
        ensure!(status == 200 && body.starts_with(&format!("{tag} /x ")), "{host}: {status} {body}");
        ensure!(body.contains("xff=127.0.0.1") && body.contains(&format!("xfh={host}")), "forwarded headers: {body}");
    }
    // And curl.
    let got = curl(&["-H", "Host: b.example.com", &format!("http://{vhost}/from-curl")]).await?;
    ensure!(String::from_utf8_lossy(&got).starts_with("b /from-curl "), "curl: {got:?}");
    // Each request rode one data stream of its service, counted with its bytes.
    let (_, status) = server.control("GET", "/status", "").await?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    for (name, requests) in [("a", 2), ("b", 2)] {
        let services = status["clients"][0]["services"].as_array().cloned().unwrap_or_default();
        let service = services.iter().find(|s| s["name"] == name);
        let counted = |key: &str| service.and_then(|s| s[key].as_u64()).unwrap_or(0);
        ensure!(counted("connections") == requests, "{name}: {status}");
        ensure!(counted("bytes_in") > 100 && counted("bytes_out") > 100, "{name}: {status}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_and_path_prefixes_longest_match_first() -> Result<()> {
    init_tracing();
    let (wild, api, exact) = (http_tagged("wild").await?, http_tagged("api").await?, http_tagged("exact").await?);
    let services = vec![
        http_service("wild", wild, &["*.wild.example"], &[]),
        http_service("api", api, &["x.wild.example"], &["/api"]),
        http_service("exact", exact, &["x.wild.example"], &["/api/v2"]),
    ];
    let (_s, _c, vhost) = setup(services).await?;
    let mut conn = tokio::net::TcpStream::connect(vhost).await?;
    for (host, path, tag) in [
        ("x.wild.example", "/api/1", "api"),
        ("x.wild.example", "/api", "api"),
        ("x.wild.example", "/api/v2/users", "exact"),
        ("x.wild.example", "/apix", "wild"),
        ("x.wild.example", "/", "wild"),
        ("y.wild.example", "/api/1", "wild"),
        ("deep.y.wild.example", "/", "wild"),
    ] {
        let (status, body) = keep_alive_request(&mut conn, host, path).await?;
        ensure!(status == 200 && body.starts_with(&format!("{tag} {path} ")), "{host}{path}: {status} {body}");
    }
    let (status, _) = keep_alive_request(&mut conn, "wild.example", "/").await?;
    ensure!(status == 404, "a wildcard does not match its bare suffix");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_a_domain_outside_the_allowance() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let a = http_tagged("a").await?;
    let services =
        vec![http_service("a", a, &["a.example.com"], &[]), http_service("stolen", a, &["bank.example.org"], &[])];
    let (_s, client, vhost) = setup(services).await?;
    let status = client.status.borrow().clone();
    let ClientStatus::Connected { services, .. } = status else { unreachable!() };
    assert_eq!(services[1].outcome, RegisterOutcome::DomainNotAllowed("bank.example.org".into()));

    let status_of = |request: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(vhost).await?;
        s.write_all(&request).await?;
        let mut back = Vec::new();
        let _ = tokio::time::timeout(wmproxy_tests::DEADLINE, s.read_to_end(&mut back)).await;
        anyhow::Ok(String::from_utf8_lossy(&back).lines().next().unwrap_or_default().to_owned())
    };
    ensure!(status_of(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await?.starts_with("HTTP/1.1 400"), "missing Host");
    let huge = format!("GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    ensure!(status_of(huge.into_bytes()).await?.starts_with("HTTP/1.1 431"), "64 KiB header");
    let unknown = b"GET / HTTP/1.1\r\nHost: nobody.example.com\r\nConnection: close\r\n\r\n".to_vec();
    ensure!(status_of(unknown).await?.starts_with("HTTP/1.1 404"), "unknown host");

    // Slowloris: a head never finished is closed at the 1 s deadline; others are served.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(vhost).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Slow: ").await?;
    let got = curl(&["-H", "Host: a.example.com", &format!("http://{vhost}/")]).await?;
    ensure!(got.starts_with(b"a / ") && started.elapsed() < std::time::Duration::from_secs(1), "served at once");
    let mut back = Vec::new();
    tokio::time::timeout(wmproxy_tests::DEADLINE, slow.read_to_end(&mut back)).await??;
    ensure!(started.elapsed() >= std::time::Duration::from_millis(900), "closed at its deadline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echo_through_the_vhost() -> Result<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    init_tracing();
    let ws_backend = wmproxy_tests::proxy::websocket_echo().await?;
    let (_s, _c, vhost) = setup(vec![http_service("ws", ws_backend, &["ws.example.com"], &[])]).await?;
    let tcp = tokio::net::TcpStream::connect(vhost).await?;
    let (mut ws, response) = tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp).await?;
    ensure!(response.status() == 101);

    ws.send(Message::text("hello")).await?;
    ensure!(ws.next().await.unwrap()? == Message::text("hello"));
    let big = wmproxy_tests::backend::pattern(1024 * 1024, 5);
    ws.send(Message::binary(big.clone())).await?;
    ensure!(ws.next().await.unwrap()?.into_data() == big, "1 MiB binary message");
    ws.send(Message::Ping(b"are you there".to_vec().into())).await?;
    ensure!(ws.next().await.unwrap()? == Message::Pong(b"are you there".to_vec().into()));
    for i in 0..1000 {
        ws.send(Message::text(format!("small {i}"))).await?;
    }
    for i in 0..1000 {
        ensure!(ws.next().await.unwrap()? == Message::text(format!("small {i}")), "message {i}");
    }
    ws.close(None).await?;
    // The close handshake completes: the backend's close frame, then the end of the stream.
    let mut closed = false;
    while let Some(message) = ws.next().await {
        closed |= matches!(message?, Message::Close(_));
    }
    ensure!(closed, "the backend's close frame came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_reaches_the_private_tls_service_which_the_user_verifies() -> Result<()> {
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    // The private service's own certificate; the server never sees its key.
    let cert = TestCert::new(&["secure.example.com"])?;
    let backend = tls_backend(&cert).await?;
    let server = TestServer::start(|f| {
        f.vhost.https_bind = Some("127.0.0.1:0".parse().unwrap());
        f.allow_domains = vec!["*.example.com".into()];
    })
    .await?;
    let https = server.handle.https_addr().unwrap();
    let mut config = server.client_config("home");
    config.services.push(https_service("secure", backend, "secure.example.com"));
    let mut client = TestClient::start(config).await?;
    ensure!(client.port_of("secure").await? == https.port());

    let connector = cert.connector()?;
    let tcp = tokio::net::TcpStream::connect(https).await?;
    let mut tls = connector.connect(ServerName::try_from("secure.example.com")?, tcp).await?;
    tls.write_all(b"ping").await?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await?;
    ensure!(reply == b"secret: ping", "reply: {reply:?}");

    // An unknown name: closed before any TLS answer.
    let tcp = tokio::net::TcpStream::connect(https).await?;
    ensure!(connector.connect(ServerName::try_from("other.example.com")?, tcp).await.is_err());
    Ok(())
}

fn https_service(name: &str, local: SocketAddr, domain: &str) -> Service {
    let hosts = wmproxy_config::Hosts { custom_domains: vec![domain.to_owned()], subdomain: None };
    Service {
        exposure: Exposure::Https { publish: Publish::Own(hosts), proxy_protocol: None },
        ..http_service(name, local, &[], &[])
    }
}

/// A private TLS service with `cert`: answers the first read with `secret: ` and those bytes.
async fn tls_backend(cert: &TestCert) -> Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = cert.acceptor()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 64];
                if let Ok(n) = tls.read(&mut buf).await {
                    let _ = tls.write_all(&[b"secret: ", &buf[..n]].concat()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Ok(backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_port_terminates_tls_for_http_services_and_passes_https_ones_through() -> Result<()> {
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let dir = tempfile::tempdir()?;
    // The server's own certificate, for names it terminates.
    let server_cert = TestCert::new(&["*.example.com"])?;
    let files = server_cert.write_pem(dir.path())?;
    let private_cert = TestCert::new(&["secure.example.com"])?;
    let server = TestServer::start(|f| {
        f.vhost.https_bind = Some("127.0.0.1:0".parse().unwrap());
        f.vhost.tls = Some(files);
        f.allow_domains = vec!["*.example.com".into()];
    })
    .await?;
    let https = server.handle.https_addr().unwrap();
    let mut config = server.client_config("home");
    config.services.push(http_service("app", http_tagged("app").await?, &["app.example.com"], &[]));
    config.services.push(https_service("secure", tls_backend(&private_cert).await?, "secure.example.com"));
    let mut client = TestClient::start(config).await?;
    // Without an HTTP port, the HTTPS port is where `http` services are reached.
    ensure!(client.port_of("app").await? == https.port());

    let terminated = server_cert.connector()?;
    let tcp = tokio::net::TcpStream::connect(https).await?;
    let mut tls = terminated.connect(ServerName::try_from("app.example.com")?, tcp).await?;
    for path in ["/one", "/two"] {
        let (status, body) = keep_alive_request(&mut tls, "app.example.com", path).await?;
        ensure!(status == 200 && body.starts_with(&format!("app {path} ")), "{status} {body}");
        ensure!(body.contains("xfp=https") && body.contains("xfh=app.example.com"), "forwarded headers: {body}");
    }
    let (status, _) = keep_alive_request(&mut tls, "nobody.example.com", "/").await?;
    ensure!(status == 404, "an unknown host over terminated TLS: {status}");

    // A name an `https` service claims still reaches its own certificate, untouched.
    let tcp = tokio::net::TcpStream::connect(https).await?;
    let mut tls = private_cert.connector()?.connect(ServerName::try_from("secure.example.com")?, tcp).await?;
    tls.write_all(b"ping").await?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await?;
    ensure!(reply == b"secret: ping", "reply: {reply:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_basic_auth_answers_401_until_the_right_credentials() -> Result<()> {
    init_tracing();
    let a = http_tagged("a").await?;
    let mut service = http_service("a", a, &["a.example.com"], &[]);
    if let Exposure::Http { publish: Publish::Own(http), .. } = &mut service.exposure {
        http.basic_auth = Some(("ann".into(), wmproxy_config::Secret::new("open-sesame")));
    }
    let (_s, _c, vhost) = setup(vec![service]).await?;
    let url = format!("http://{vhost}/private");
    let status = |args: Vec<String>| async move {
        let mut all = vec!["-o".to_owned(), "/dev/null".to_owned(), "-w".to_owned(), "%{http_code}".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        anyhow::Ok(String::from_utf8(curl(&all).await?)?)
    };
    let host = "Host: a.example.com".to_owned();
    ensure!(status(vec!["-H".into(), host.clone(), url.clone()]).await? == "401", "no credentials");
    ensure!(status(vec!["-u".into(), "ann:wrong".into(), "-H".into(), host.clone(), url.clone()]).await? == "401");
    ensure!(
        status(vec!["-u".into(), "ann:open-sesame".into(), "-H".into(), host.clone(), url.clone()]).await? == "200"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() -> Result<()> {
    use tokio::io::AsyncReadExt;
    init_tracing();
    let a = http_tagged("a").await?;
    let (_s, _c, vhost) = setup(vec![http_service("a", a, &["a.example.com"], &[])]).await?;
    let mut conn = tokio::net::TcpStream::connect(vhost).await?;
    let (status, _) = keep_alive_request(&mut conn, "a.example.com", "/").await?;
    ensure!(status == 200);
    let idle_from = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(wmproxy_tests::DEADLINE, conn.read(&mut buf)).await??;
    let idle = idle_from.elapsed();
    ensure!(n == 0, "closed, not answered");
    ensure!(idle >= std::time::Duration::from_millis(900), "kept open for the 1 s timeout: {idle:?}");
    println!("idle keep-alive connection closed after {idle:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ws_tcp_bridge_carries_a_tcp_echo_session_end_to_end() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let echo = wmproxy_tests::backend::echo().await?;
    // The private TCP echo, published as a WebSocket endpoint at ws://localhost/.
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some("127.0.0.1:0".parse().unwrap());
        f.allow_domains = vec!["localhost".into()];
    })
    .await?;
    let vhost = server.handle.vhost_addr().unwrap();
    let mut published = server.client_config("home");
    let route = wmproxy_config::WsRoute { custom_domains: vec!["localhost".into()], ..Default::default() };
    let exposure = Exposure::Ws { publish: Publish::Own(route), proxy_protocol: None };
    published.services.push(Service { exposure, ..http_service("echo-ws", echo, &[], &[]) });
    let mut home = TestClient::start(published).await?;
    home.port_of("echo-ws").await?;

    // Elsewhere, a client's local TCP port whose connections become WebSocket connections.
    let mut bridging = server.client_config("laptop");
    bridging.forwards.push(wmproxy_config::Forward {
        listen: "127.0.0.1:0".parse()?,
        kind: wmproxy_config::ForwardKind::Ws { target: format!("ws://localhost:{}/", vhost.port()) },
    });
    let laptop = TestClient::start(bridging).await?;
    let local = laptop.forward_addrs[0];

    // An interactive session (WebSocket has no half-close: a close ends both directions).
    let mut tcp = tokio::net::TcpStream::connect(local).await?;
    for round in 0..30u64 {
        let chunk = wmproxy_tests::backend::pattern(10_000, round + 1);
        tcp.write_all(&chunk).await?;
        let mut back = vec![0u8; chunk.len()];
        tokio::time::timeout(wmproxy_tests::DEADLINE, tcp.read_exact(&mut back)).await??;
        ensure!(back == chunk, "round {round}: echo through TCP → WebSocket → vhost → tunnel → TCP altered");
    }
    drop(tcp);

    // A plain HTTP request to the bridge endpoint is refused.
    let mut conn = tokio::net::TcpStream::connect(vhost).await?;
    let (status, _) = keep_alive_request(&mut conn, "localhost", "/").await?;
    ensure!(status == 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_served_by_a_group_spreads_requests_and_answers_503_or_502_without_a_backend() -> Result<()> {
    use wmproxy_tests::groups::{http_group, member_of};
    init_tracing();
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some("127.0.0.1:0".parse().unwrap());
        f.groups = vec![http_group("site", "lb.example.com"), http_group("broken", "broken.example.com")];
    })
    .await?;
    let vhost = server.handle.vhost_addr().unwrap();
    let mut conn = tokio::net::TcpStream::connect(vhost).await?;
    // The route is the server's own: it exists before any backend joins.
    let (status, body) = keep_alive_request(&mut conn, "lb.example.com", "/").await?;
    ensure!(status == 503 && body.contains("no healthy backend"), "{status} {body}");

    let http_member = |name: &str, local: SocketAddr, group: &str| {
        member_of(wmproxy_config::ServiceKind::Http, (name, local), group, 1, None)
    };
    let mut config = server.client_config("home");
    config.services = vec![
        http_member("a", http_tagged("a").await?, "site"),
        http_member("b", http_tagged("b").await?, "site"),
        http_member("gone", wmproxy_tests::backend::dead_port().await?, "broken"),
    ];
    let mut client = TestClient::start(config).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = status else { unreachable!() };
    for s in &services {
        ensure!(s.outcome == RegisterOutcome::Joined { port: vhost.port() }, "{}: {}", s.name, s.outcome);
    }

    let mut seen = Vec::new();
    for i in 0..4 {
        let (status, body) = keep_alive_request(&mut conn, "lb.example.com", &format!("/{i}")).await?;
        ensure!(status == 200 && body.contains(&format!(" /{i} host=lb.example.com")), "{status} {body}");
        seen.push(body[..1].to_owned());
    }
    ensure!(seen == ["a", "b", "a", "b"] || seen == ["b", "a", "b", "a"], "round robin over both: {seen:?}");

    // The only backend of `broken` fails its dial (502) and is ejected: then 503.
    let (status, _) = keep_alive_request(&mut conn, "broken.example.com", "/").await?;
    ensure!(status == 502, "a failing backend: {status}");
    let (status, _) = keep_alive_request(&mut conn, "broken.example.com", "/").await?;
    ensure!(status == 503, "an ejected backend: {status}");
    Ok(())
}
