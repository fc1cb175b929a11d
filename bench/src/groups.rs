//! Load-balancing figures: the cost of picking a backend (the policy alone, and a whole new
//! connection through a group of 1 and of 64 backends vs a plain service), and the recovery
//! time after a backend dies with passive checks only and with active checks at 1 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use wmproxy_config::{Policy, Service};
use wmproxy_server::groups::policy::{Candidate, Selector};
use wmproxy_tests::groups::{self, member, tagged, tcp_check};
use wmproxy_tests::{TestClient, TestServer, backend};

/// Nanoseconds per pick of `policy` among `n` backends (the policy's work alone).
pub fn pick_ns(policy: Policy, n: usize, picks: usize) -> f64 {
    let candidates: Vec<Candidate> = (0..n)
        .map(|i| Candidate { id: i as u64, weight: 1 + (i % 3) as u32, active: i % 7, hash_key: i as u64 * 0x9e37 })
        .collect();
    let mut selector = Selector::new(policy);
    let started = Instant::now();
    let mut sum = 0usize;
    for i in 0..picks {
        let user = std::net::IpAddr::from((i as u32).to_be_bytes());
        sum = sum.wrapping_add(selector.pick(std::hint::black_box(&candidates), user).unwrap_or(0));
    }
    std::hint::black_box(sum);
    started.elapsed().as_nanos() as f64 / picks as f64
}

/// A server with a round-robin group of `n` echo backends on one client, plus the same echo as
/// a plain service; returns both public addresses (and what keeps them alive).
pub async fn group_of(n: usize) -> Result<(TestServer, TestClient, SocketAddr, SocketAddr)> {
    let public = backend::dead_port().await?;
    let server =
        TestServer::start(|f| f.groups.push(groups::tcp_group("web", public.port(), Policy::RoundRobin))).await?;
    let echo = backend::echo().await?;
    let mut config = server.client_config("bench-groups");
    config.services = (0..n).map(|i| member(&format!("b{i}"), echo, "web", 1, None)).collect::<Vec<Service>>();
    config.services.push(wmproxy_tests::tcp_service("plain", echo, 0));
    let mut client = TestClient::start(config).await?;
    let plain = SocketAddr::from(([127, 0, 0, 1], client.port_of("plain").await?));
    Ok((server, client, public, plain))
}

/// Kills one of two backends while a user connects every 5 ms for `run`, and returns (failed
/// connections, time from the death to the last failure).
pub async fn recovery(passive: bool, active_interval: Option<Duration>, run: Duration) -> Result<(usize, Duration)> {
    let public = backend::dead_port().await?;
    let mut group = groups::group("web", public.port(), Policy::RoundRobin);
    group.max_fails = u32::from(passive);
    // No retry: every connection sent to the dead backend fails, which is what is measured.
    group.retries = 0;
    let server = TestServer::start(move |f| f.groups.push(wmproxy_config::GroupFile::Tcp(group))).await?;
    let (live, dead) = (tagged("live").await?, tagged("dead").await?);
    let check = active_interval.map(|i| {
        let mut c = tcp_check(i.as_millis() as u64, 2, 2);
        c.start_healthy = true;
        c
    });
    let mut config = server.client_config("bench-recovery");
    config.services =
        vec![member("live", live.addr, "web", 1, check.clone()), member("dead", dead.addr, "web", 1, check)];
    let mut client = TestClient::start(config).await?;
    client.port_of("live").await.ok();
    for _ in 0..4 {
        groups::which(public).await?;
    }

    dead.stop();
    let died = Instant::now();
    let (mut failed, mut last_failure) = (0, Duration::ZERO);
    while died.elapsed() < run {
        if groups::which(public).await.is_err() {
            failed += 1;
            last_failure = died.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((failed, last_failure))
}
