//! Per-user limits: one user (an address) cannot use up what other users need.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use wmproxy_config::Policy;
use wmproxy_config::proxy::{ServerProxyFields, ServerProxyFile};
use wmproxy_tests::groups::tcp_group;
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::proxy::keep_alive_request;
use wmproxy_tests::{DEADLINE, TestServer, echo_client, eventually_async, init_tracing};

/// A connection to `to` from `from` (any of 127.0.0.0/8, so a test can be many users).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(to).await?)
}

/// Whether `tcp` carries a message to the echo service and back.
async fn echoes(tcp: &mut TcpStream) -> Result<bool> {
    tcp.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    Ok(matches!(tokio::time::timeout(DEADLINE, tcp.read_exact(&mut back)).await, Ok(Ok(_))) && &back == b"ping")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holding_hundreds_of_idle_connections_does_not_keep_another_out() -> Result<()> {
    init_tracing();
    const CAP: u32 = 50;
    const IDLE: u32 = 300;
    // Fewer stream permits than the idle user's connections: without the cap, they would be
    // all taken.
    let server = TestServer::start(|f| {
        f.limits.max_connections_per_user = CAP;
        f.limits.max_streams_per_client = 200;
    })
    .await?;
    let (_client, public) = echo_client(&server, "home").await?;

    let hog = Ipv4Addr::new(127, 0, 0, 2);
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        // One over the cap may be reset before `connect` returns.
        match connect_from(hog, public).await {
            Ok(tcp) => idle.push(tcp),
            Err(e)
                if e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == Some(ErrorKind::ConnectionReset) => {
            }
            Err(e) => return Err(e),
        }
    }
    let carried = async || {
        let active = sample(&scrape(&server).await?, "wmproxy_streams_active", &[("service", "echo")]);
        Ok(active >= Some(f64::from(CAP)))
    };
    eventually_async("the hog's connections carried", carried).await?;

    // Another user is served, and so is the hog within its cap.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), public).await?;
    ensure!(echoes(&mut other).await?, "another user was not served");
    ensure!(echoes(&mut idle[0]).await?, "the hog's first connection was not carried");
    let refused_the_rest = async || {
        let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "connections_per_user")]);
        Ok(refused == Some(f64::from(IDLE - CAP)))
    };
    eventually_async("every connection over the cap refused", refused_the_rest).await?;
    // A connection over the cap is reset, not carried.
    ensure!(idle.len() >= CAP as usize, "{} connections", idle.len());
    let mut over = idle.pop().context("the idle connections")?;
    ensure!(!echoes(&mut over).await.unwrap_or(false), "a connection over the cap was carried");

    // When the hog's connections end, its places come back.
    idle.clear();
    let mut again = None;
    eventually_async("the hog's places back", async || {
        let Ok(mut tcp) = connect_from(hog, public).await else { return Ok(false) };
        let served = echoes(&mut tcp).await.unwrap_or(false);
        again = Some(tcp);
        Ok(served)
    })
    .await?;
    Ok(())
}

/// Whether a connection from `from` to `to` is reset at once (before `connect` returns or on
/// the first read), rather than served or closed cleanly.
async fn reset_at_once(from: Ipv4Addr, to: SocketAddr) -> Result<bool> {
    let mut tcp = match connect_from(from, to).await {
        Ok(tcp) => tcp,
        Err(e) => {
            return Ok(e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == Some(ErrorKind::ConnectionReset));
        }
    };
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut [0u8; 1])).await;
    Ok(matches!(read, Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_counts_a_user_over_every_public_listener() -> Result<()> {
    init_tracing();
    let group_port = wmproxy_tests::backend::dead_port().await?.port();
    let server = TestServer::start(|f| {
        f.limits.max_connections_per_user = 2;
        f.vhost.http_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.vhost.https_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.groups.push(tcp_group("g", group_port, Policy::RoundRobin));
        f.proxies = vec![ServerProxyFile::Socks5(ServerProxyFields {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            username: None,
            password: None,
            handshake_timeout_secs: 10,
            via: toml::Spanned::new(0..0, "home".into()),
        })];
    })
    .await?;
    let (_client, public) = echo_client(&server, "home").await?;
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let https = server.handle.https_addr().context("https")?;
    let proxy = server.handle.proxy_addrs()[0];
    let group = SocketAddr::from(([127, 0, 0, 1], group_port));

    // The hog holds its two places with idle connections on the vhost port.
    let hog = Ipv4Addr::new(127, 0, 0, 2);
    let _held = (connect_from(hog, vhost).await?, connect_from(hog, vhost).await?);
    let opened = async || Ok(server.handle.open_connections_of(hog.into()) == 2);
    eventually_async("the hog's two connections accepted", opened).await?;
    for (listener, addr) in [("published port", public), ("group port", group), ("vhost", vhost), ("https", https)] {
        ensure!(reset_at_once(hog, addr).await?, "{listener}: the hog's third connection was not reset");
    }
    ensure!(reset_at_once(hog, proxy).await?, "proxy: the hog's third connection was not reset");

    // Another user is served.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 3), vhost).await?;
    let (status, _) = keep_alive_request(&mut other, "nobody.example.com", "/").await?;
    ensure!(status == 404, "another user got {status}");
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "connections_per_user")]);
    ensure!(refused == Some(5.0), "refused: {refused:?}");
    Ok(())
}

/// `GET /` for `host` from `from` on its own connection: the status and the `Retry-After`
/// header, if any.
async fn get_from(from: Ipv4Addr, vhost: SocketAddr, host: &str) -> Result<(u16, Option<u64>)> {
    let mut tcp = connect_from(from, vhost).await?;
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).context("a status line")?;
    let retry_after = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok());
    Ok((status, retry_after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_request_rate_gets_429_with_retry_after_and_others_are_served() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| {
        f.vhost.http_bind = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        f.vhost.user_requests_per_minute = 1;
        f.vhost.user_request_burst = 3;
    })
    .await?;
    let vhost = server.handle.vhost_addr().context("vhost")?;
    let eager = Ipv4Addr::new(127, 0, 0, 2);
    // Its burst (no service has the name: 404, but served), then 429 until a token comes back,
    // a minute later.
    for _ in 0..3 {
        ensure!(get_from(eager, vhost, "nobody.example.com").await? == (404, None));
    }
    let (status, retry_after) = get_from(eager, vhost, "nobody.example.com").await?;
    ensure!(status == 429 && retry_after.is_some_and(|s| (1..=60).contains(&s)), "{status} {retry_after:?}");
    ensure!(get_from(Ipv4Addr::new(127, 0, 0, 3), vhost, "nobody.example.com").await?.0 == 404, "another user");
    let refused = sample(&scrape(&server).await?, "wmproxy_refused_total", &[("cause", "request_rate")]);
    ensure!(refused == Some(1.0), "request_rate refusals: {refused:?}");
    Ok(())
}
