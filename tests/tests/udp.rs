//! UDP services and forwards over QUIC datagrams: many flows, expiry, limits, large packets,
//! reconnects and malformed datagrams.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail, ensure};
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, eventually, init_tracing, udp};

/// Starts a UDP echo backend and a client `name` publishing it as `echo`; returns the client
/// and the public address.
async fn udp_echo_client(server: &TestServer, name: &str) -> Result<(TestClient, SocketAddr)> {
    let echo = udp::echo().await?;
    let mut config = server.client_config(name);
    config.services.push(udp::service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("echo").await?;
    Ok((client, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// A request of flow `flow`, number `seq`: both numbers, then filler whose length and bytes
/// depend on them, so a reply can only match the request that caused it.
fn request(flow: u32, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    out.extend_from_slice(&flow.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend(pattern(16 + (flow as usize * 7 + seq as usize) % 180, u64::from(flow) << 32 | u64::from(seq)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_flows_of_a_hundred_packets_each_reach_their_own_user() -> Result<()> {
    init_tracing();
    // 500 user sockets and 500 client flow sockets live in this one process.
    rlimit::increase_nofile_limit(8192)?;
    const FLOWS: u32 = 500;
    const PACKETS: u32 = 100;
    let server = TestServer::start(|_| {}).await?;
    let (client, public) = udp_echo_client(&server, "home").await?;
    let resent = Arc::new(AtomicUsize::new(0));

    let mut users = tokio::task::JoinSet::new();
    for flow in 0..FLOWS {
        let resent = resent.clone();
        users.spawn(async move {
            let socket = udp::user().await?;
            for seq in 0..PACKETS {
                udp::round_trip(&socket, public, &request(flow, seq), |stray| {
                    // A late copy of one of this user's earlier requests, never another's.
                    resent.fetch_add(1, Ordering::Relaxed);
                    let from = u32::from_be_bytes(stray[..4].try_into()?);
                    let seq_of = u32::from_be_bytes(stray[4..8].try_into()?);
                    ensure!(from == flow && seq_of < seq && stray == request(from, seq_of), "foreign reply");
                    Ok(())
                })
                .await
                .with_context(|| format!("flow {flow}, packet {seq}"))?;
            }
            anyhow::Ok(())
        });
    }
    let all_done = tokio::time::timeout(DEADLINE * 3, async {
        while let Some(done) = users.join_next().await {
            done??;
        }
        anyhow::Ok(())
    });
    all_done.await.context("flows did not finish")??;

    let s = server.handle.udp_stats();
    let c = client.udp.snapshot();
    println!("server {s:?}\nclient {c:?}\nlate duplicates seen: {}", resent.load(Ordering::Relaxed));
    assert_eq!(s.active_flows, u64::from(FLOWS), "one flow per user address on the server");
    assert_eq!(c.active_flows, u64::from(FLOWS), "one socket per flow on the client");
    assert!(s.datagrams_sent > 0 && c.datagrams_sent > 0);
    assert_eq!(s.dropped_unknown_flow + c.dropped_unknown_flow + s.dropped_malformed + c.dropped_malformed, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_expire_on_both_ends_and_a_user_can_start_again() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| f.limits.udp_flow_idle_timeout_secs = 1).await?;
    let echo = udp::echo().await?;
    let mut config = server.client_config("home");
    config.services.push(udp::service("echo", echo, 0));
    config.limits.udp_flow_idle_timeout_secs = 1;
    let mut client = TestClient::start(config).await?;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));
    let baseline = (server.handle.udp_stats().active_flows, client.udp.snapshot().active_flows);
    assert_eq!(baseline, (0, 0));

    let mut users = Vec::new();
    for i in 0..20u8 {
        let socket = udp::user().await?;
        udp::round_trip(&socket, public, &[i; 10], |_| Ok(())).await?;
        users.push(socket);
    }
    assert_eq!(server.handle.udp_stats().active_flows, 20);
    assert_eq!(client.udp.snapshot().active_flows, 20);

    eventually("flow tables back to their baseline", || {
        (server.handle.udp_stats().active_flows, client.udp.snapshot().active_flows) == baseline
    })
    .await?;
    let expired = server.handle.udp_stats().flows_expired + client.udp.snapshot().flows_expired;
    assert!(expired >= 20, "expired {expired}");

    // The same user address starts a new flow.
    udp::round_trip(&users[0], public, b"again", |_| Ok(())).await?;
    assert_eq!(server.handle.udp_stats().active_flows, 1);
    Ok(())
}

/// Opens `n` flows to `public`, each proven by a round trip.
async fn open_flows(public: SocketAddr, n: usize) -> Result<Vec<tokio::net::UdpSocket>> {
    let mut users = Vec::new();
    for i in 0..n {
        let socket = udp::user().await?;
        udp::round_trip(&socket, public, format!("hello {i}").as_bytes(), |_| Ok(())).await?;
        users.push(socket);
    }
    Ok(users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_limits_drop_and_count_new_flows_while_existing_ones_work() -> Result<()> {
    init_tracing();
    // The per-client limit, then the global one.
    for per_client in [true, false] {
        let server = TestServer::start(|f| {
            if per_client {
                f.limits.max_udp_flows_per_client = 8;
            } else {
                f.limits.max_udp_flows = 8;
            }
        })
        .await?;
        let (_client, public) = udp_echo_client(&server, "home").await?;
        let users = open_flows(public, 8).await?;

        let extra = open_extra(public, 4).await?;
        eventually("4 packets dropped at the flow limit", || server.handle.udp_stats().dropped_flow_limit >= 4).await?;
        for socket in &extra {
            let mut buf = [0u8; 64];
            assert!(socket.try_recv(&mut buf).is_err(), "a flow over the limit got a reply");
        }
        assert_eq!(server.handle.udp_stats().active_flows, 8);
        for (i, socket) in users.iter().enumerate() {
            udp::round_trip(socket, public, format!("still here {i}").as_bytes(), |_| Ok(())).await?;
        }
    }
    Ok(())
}

/// Sends one packet each from `n` new user sockets, without waiting for replies.
async fn open_extra(public: SocketAddr, n: usize) -> Result<Vec<tokio::net::UdpSocket>> {
    let mut extra = Vec::new();
    for _ in 0..n {
        let socket = udp::user().await?;
        socket.send_to(b"one too many", public).await?;
        extra.push(socket);
    }
    Ok(extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_flow_limit_refuses_flows_the_server_opens() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let echo = udp::echo().await?;
    let mut config = server.client_config("home");
    config.services.push(udp::service("echo", echo, 0));
    config.limits.max_udp_flows = 2;
    let mut client = TestClient::start(config).await?;
    let public = SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));
    let users = open_flows(public, 2).await?;
    let _extra = open_extra(public, 1).await?;
    eventually("the client refuses the third flow", || client.udp.snapshot().dropped_flow_limit >= 1).await?;
    eventually("the server sees the refusal", || server.handle.udp_stats().flows_refused >= 1).await?;
    for socket in &users {
        udp::round_trip(socket, public, b"still here", |_| Ok(())).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_too_large_for_a_datagram_ride_the_flow_stream_intact() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (client, public) = udp_echo_client(&server, "home").await?;
    let socket = udp::user().await?;
    udp::round_trip(&socket, public, b"small first", |_| Ok(())).await?;
    let before = (server.handle.udp_stats(), client.udp.snapshot());

    for size in [8 * 1024, 60_000] {
        let big = pattern(size, size as u64);
        udp::round_trip(&socket, public, &big, |_| Ok(())).await.with_context(|| format!("{size} bytes"))?;
    }
    let (s, c) = (server.handle.udp_stats(), client.udp.snapshot());
    assert!(s.stream_packets_sent >= before.0.stream_packets_sent + 2, "server → client on the stream: {s:?}");
    assert!(c.stream_packets_sent >= before.1.stream_packets_sent + 2, "client → server on the stream: {c:?}");

    // Small packets of the same flow still go as datagrams.
    udp::round_trip(&socket, public, b"small again", |_| Ok(())).await?;
    assert!(server.handle.udp_stats().datagrams_sent > s.datagrams_sent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_service_works_again_after_a_server_restart() -> Result<()> {
    init_tracing();
    let mut server = TestServer::start(|_| {}).await?;
    let echo = udp::echo().await?;
    // A specific public port, so the same address answers before and after the restart.
    let public = free_udp_port().await?;
    let mut config = server.client_config("home");
    config.services.push(udp::service("echo", echo, public.port()));
    let mut client = TestClient::start(config).await?;
    assert_eq!(client.port_of("echo").await?, public.port());
    let socket = udp::user().await?;
    udp::round_trip(&socket, public, b"before", |_| Ok(())).await?;

    server.restart().await?;
    client.wait_for("the tunnel to drop", |s| !matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    client.port_of("echo").await?;
    // The same user socket: its old flow died with the old server; a new one starts.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while udp::request(&socket, public, b"after").await.ok().as_deref() != Some(b"after") {
        if tokio::time::Instant::now() > deadline {
            bail!("no echo after the restart");
        }
    }
    Ok(())
}

/// A UDP port that was free a moment ago.
async fn free_udp_port() -> Result<SocketAddr> {
    let socket = udp::user().await?;
    Ok(socket.local_addr()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_and_counted() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_client, public) = udp_echo_client(&server, "home").await?;
    let (_endpoint, conn, _send, _recv) =
        wmproxy_tests::raw::authenticated(&server, "raw", "test-token-0123456789").await?;

    // Datagrams are unreliable: send the set again until every one has been counted.
    eventually("every malformed datagram counted", || {
        for d in [&[][..], &[0x40][..], &[0x80, 1, 2][..], &[0x25, b'x'][..]] {
            conn.send_datagram(bytes::Bytes::copy_from_slice(d)).unwrap();
        }
        let s = server.handle.udp_stats();
        s.dropped_malformed >= 3 && s.dropped_unknown_flow >= 1
    })
    .await?;
    assert!(conn.close_reason().is_none(), "the sender stays connected");
    let socket = udp::user().await?;
    udp::round_trip(&socket, public, b"unharmed", |_| Ok(())).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_service_without_datagram_support_is_refused_at_registration() -> Result<()> {
    use wmproxy_tunnel::stream::{read_frame, write_frame};
    use wmproxy_wire::{ControlReply, ControlRequest, RegisterOutcome, ServiceKind, ServiceSpec};
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_endpoint, _conn, mut send, mut recv) =
        wmproxy_tests::raw::authenticated_with(&server, "raw", wmproxy_tests::TOKEN, |t| {
            t.datagram_receive_buffer_size(None);
        })
        .await?;
    let spec = |name: &str, kind| ServiceSpec {
        name: wmproxy_tests::name(name),
        kind,
        remote_port: 0,
        group: None,
        http: None,
        bandwidth_limit: None,
        private: None,
    };
    let services = vec![spec("dns", ServiceKind::Udp), spec("web", ServiceKind::Tcp)];
    write_frame(&mut send, &ControlRequest::Register { services }).await?;
    let ControlReply::Registered { results } = read_frame(&mut recv).await? else { bail!("unexpected reply") };
    assert_eq!(results[0].outcome, RegisterOutcome::DatagramsUnsupported);
    assert!(matches!(results[1].outcome, RegisterOutcome::Ok { .. }), "TCP is unaffected");
    println!("{}", results[0].outcome);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_forward_leaves_from_the_server_under_its_egress_policy() -> Result<()> {
    init_tracing();
    let allowed = udp::echo().await?;
    let denied = tokio::net::UdpSocket::bind("127.0.0.2:0").await?;
    let server = TestServer::start(|f| f.egress.allow = vec!["127.0.0.1/32".parse().unwrap()]).await?;
    let mut config = server.client_config("home");
    config.forwards.push(udp::forward_to(allowed));
    config.forwards.push(udp::forward_to(denied.local_addr()?));
    let mut client = TestClient::start(config).await?;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let (ok_port, denied_port) = (client.forward_addrs[0], client.forward_addrs[1]);

    let socket = udp::user().await?;
    for i in 0..50u32 {
        udp::round_trip(&socket, ok_port, &request(7, i), |_| Ok(())).await?;
    }
    let s = server.handle.udp_stats();
    assert_eq!(s.active_flows, 1, "one flow, with its socket on the server");

    socket.send_to(b"to a denied target", denied_port).await?;
    eventually("the server refuses the flow", || client.udp.snapshot().flows_refused >= 1).await?;
    let mut buf = [0u8; 64];
    assert!(denied.try_recv_from(&mut buf).is_err(), "nothing reached the denied target");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_services_share_one_tunnel() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (tcp_echo, udp_echo) = (backend::echo().await?, udp::echo().await?);
    let mut config = server.client_config("home");
    config.services.push(wmproxy_tests::tcp_service("tcp", tcp_echo, 0));
    config.services.push(udp::service("udp", udp_echo, 0));
    let mut client = TestClient::start(config).await?;
    let tcp_public = SocketAddr::from(([127, 0, 0, 1], client.port_of("tcp").await?));
    let udp_public = SocketAddr::from(([127, 0, 0, 1], client.port_of("udp").await?));
    backend::assert_echo(tcp_public, 100_000, 1).await?;
    udp::round_trip(&udp::user().await?, udp_public, b"udp", |_| Ok(())).await?;
    Ok(())
}
