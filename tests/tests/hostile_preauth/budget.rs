//! Before authentication: a connection that has not proven anything takes no client place, has
//! a short deadline, one stream and a small window, and waits in a budget of its own, where a
//! newer one takes the oldest's place. So a crowd of silent peers never locks a real client out.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wmproxy_client::{ClientError, ClientStatus};
use wmproxy_tests::metrics::{sample, scrape};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, backend, echo_client, eventually, init_tracing, raw};
use wmproxy_tunnel::transport::PRE_AUTH_WINDOW;
use wmproxy_wire::RejectReason;

/// Silent peers at once: more than the default budget of 128, from 64 addresses.
const ADDRESSES: u8 = 64;
const PER_ADDRESS: usize = 3;
/// Connections one silent peer makes at most, so the crowd is bounded in count.
const ATTEMPTS: usize = 200;

/// One silent peer: from its own endpoint, completes TLS, says nothing, and when the server
/// closes the connection makes a new one, until `stop` or [`ATTEMPTS`].
async fn silent_peer(
    server: (std::net::SocketAddr, [u8; 32]),
    endpoint: quinn::Endpoint,
    handshakes: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let (addr, fingerprint) = server;
    let Ok(quic) = wmproxy_client::tls::quic_client_config(&wmproxy_config::ServerTrust::Fingerprint(fingerprint))
    else {
        return;
    };
    for _ in 0..ATTEMPTS {
        let Ok(connecting) = endpoint.connect_with(quic.clone(), addr, "wmproxy") else { return };
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            conn = connecting => conn,
        };
        let Ok(conn) = conn else { continue };
        handshakes.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = stop.cancelled() => return conn.close(0u32.into(), b"done"),
            _ = conn.closed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_silent_peers_does_not_lock_out_a_real_client() -> Result<()> {
    init_tracing();
    // Few client places: before authentication took them, 16 silent peers were enough.
    let server = TestServer::start(|f| f.limits.max_clients = 16).await?;
    let (stop, crowd) = (CancellationToken::new(), TaskTracker::new());
    let handshakes = Arc::new(AtomicUsize::new(0));
    for a in 0..ADDRESSES {
        let endpoint = raw::endpoint_at(Ipv4Addr::new(127, 0, 1, a + 1))?;
        for _ in 0..PER_ADDRESS {
            let peer =
                silent_peer((server.addr, server.fingerprint.0), endpoint.clone(), handshakes.clone(), stop.clone());
            crowd.spawn(peer);
        }
    }
    eventually("the crowd to take every client place", || handshakes.load(Ordering::Relaxed) >= 16).await?;

    // While the crowd keeps coming, a real client connects and its service answers in 5 s.
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        let (client, public) = echo_client(&server, "home").await?;
        backend::assert_echo(public, 4096, 1).await?;
        anyhow::Ok(client)
    })
    .await;
    let elapsed = started.elapsed();
    let seen = handshakes.load(Ordering::Relaxed);
    let _client = answered.with_context(|| format!("no answer within 5 s; the crowd made {seen} handshakes"))??;
    println!("the real client answered after {elapsed:?}, the crowd made {seen} TLS handshakes so far");

    let metrics = scrape(&server).await?;
    let evicted = sample(&metrics, "wmproxy_refused_total", &[("cause", "unauthenticated_evicted")]).unwrap_or(0.0);
    let validations = sample(&metrics, "wmproxy_address_validations_total", &[]).unwrap_or(0.0);
    let waiting = sample(&metrics, "wmproxy_unauthenticated", &[]).unwrap_or(-1.0);
    println!("evicted {evicted}, address validations {validations}, waiting {waiting}");
    ensure!(evicted > 0.0 && validations > 0.0, "the crowd was not over the budget");
    ensure!((0.0..=128.0).contains(&waiting), "the budget holds: {waiting} waiting");

    stop.cancel();
    crowd.close();
    crowd.wait().await;
    let mut waiting = -1.0;
    for _ in 0..2000 {
        waiting = sample(&scrape(&server).await?, "wmproxy_unauthenticated", &[]).unwrap_or(-1.0);
        if waiting == 0.0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{waiting} connections still waiting after the crowd left")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_proof_a_peer_gets_a_small_window_a_short_deadline_and_no_datagrams() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| f.limits.auth_timeout_secs = 1).await?;

    // The window: one write takes as much as the server's credit allows, and before the proof
    // that is PRE_AUTH_WINDOW in all, where a tunnel gets 16 MiB.
    let (_endpoint, conn) = raw::connect(&server).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    let taken = send.write(&vec![0u8; 1024 * 1024]).await?;
    println!("one write of 1 MiB took {taken} bytes before authentication");
    ensure!(taken <= PRE_AUTH_WINDOW as usize, "{taken} bytes accepted before authentication");

    // The deadline: a silent peer is closed after `auth_timeout_secs`, with the reason.
    let (_endpoint, conn) = raw::connect(&server).await?;
    let closed = tokio::time::timeout(DEADLINE, conn.closed()).await?;
    ensure!(closed.to_string().contains("no correct proof within the authentication timeout"), "{closed}");

    // A datagram before the proof ends the connection at once.
    let (_endpoint, conn) = raw::connect(&server).await?;
    conn.send_datagram(bytes::Bytes::from_static(b"\x00early"))?;
    let closed = tokio::time::timeout(DEADLINE, conn.closed()).await?;
    ensure!(closed.to_string().contains("datagram before authentication"), "{closed}");

    // An authenticated peer gets its full stream count at once.
    let (_endpoint, conn, _send, _recv) = raw::authenticated(&server, "raw", wmproxy_tests::TOKEN).await?;
    for _ in 0..8 {
        let (mut send, _recv) = tokio::time::timeout(DEADLINE, conn.open_bi()).await??;
        send.write_all(b"x").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authenticated_tunnels_count_toward_max_clients() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| f.limits.max_clients = 1).await?;
    // A silent peer holds no client place.
    let (_endpoint, _silent) = raw::connect(&server).await?;
    let (_first, public) = echo_client(&server, "first").await?;
    backend::assert_echo(public, 1024, 1).await?;

    // A second client with the right token is told the server is full, and keeps trying.
    let mut second = TestClient::start(server.client_config("second")).await?;
    second
        .wait_for(
            "the second refused as the server is full",
            |s| matches!(s, ClientStatus::Connecting { last_error: Some(e), .. } if e.contains("client limit")),
        )
        .await?;
    ensure!(ClientError::Rejected(RejectReason::ServerFull).is_retryable());
    let metrics = scrape(&server).await?;
    let full = sample(&metrics, "wmproxy_refused_total", &[("cause", "server_full")]).unwrap_or(0.0);
    ensure!(full >= 1.0, "server_full refusals: {full}");
    ensure!(server.handle.clients() == ["first"], "{:?}", server.handle.clients());
    Ok(())
}
