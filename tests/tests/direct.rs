//! Direct connections between clients (private services), on the namespace bed: two homes
//! behind two NATs reach each other directly when the NATs keep ports, fall back to the server
//! when one maps ports at random, find each other on a shared LAN, and move to the server and
//! back when the path between them is cut and mended. Skipped, saying why, where the bed cannot
//! be built.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_client::ClientStatus;
use wmproxy_config::secret::Secret;
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tests::backend::{self, bulk_echo};
use wmproxy_tests::netbed::{self, InNetns, Mapping};
use wmproxy_tests::{TestClient, TestServer, control_api, name, private, tcp_service};

const SECRET: &str = "direct-secret-5678";

/// How long a test waits for a path to change: a lost direct connection is noticed within
/// its idle timeout (6 s), and a new attempt follows within its backoff.
const PATH_DEADLINE: Duration = Duration::from_secs(45);

/// A server on the public host, `home` (with the private services "db", a TCP echo, and
/// "dns", a UDP echo) on `a` and `office` (with a visitor of "db" per mode, then an `auto` one
/// of "dns") on `b`, both connected.
struct Two {
    server: TestServer,
    home: TestClient,
    office: TestClient,
    /// Office's control API (in `b`'s namespace).
    office_api: SocketAddr,
    /// Home's control API (in `a`'s namespace).
    home_api: SocketAddr,
}

async fn two(public: &InNetns, a: &InNetns, b: &InNetns) -> Result<Two> {
    let server = netbed::public_server(public).await?;
    let echo = a.run(backend::echo()).await??;
    let mut home = server.client_config("home");
    home.control = Some(control_api());
    home.services.push(private(tcp_service("db", echo, 0), Some(SECRET), &[]));
    let udp_echo = a.run(wmproxy_tests::udp::echo()).await??;
    home.services.push(private(wmproxy_tests::udp::service("dns", udp_echo, 0), Some(SECRET), &[]));
    let mut home = a.run(TestClient::start(home)).await??;
    home.wait_for("home connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let mut office = server.client_config("office");
    office.control = Some(control_api());
    office.visitors = [VisitMode::Auto, VisitMode::Direct, VisitMode::Relay]
        .into_iter()
        .map(|mode| Visitor {
            name: name(mode.as_str()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: name("home"),
            service: name("db"),
            secret_key: Some(Secret::new(SECRET)),
            mode,
            kind: wmproxy_wire::ServiceKind::Tcp,
        })
        .collect();
    office.visitors.push(Visitor {
        name: name("dns"),
        service: name("dns"),
        kind: wmproxy_wire::ServiceKind::Udp,
        ..office.visitors[0].clone()
    });
    let mut office = b.run(TestClient::start(office)).await??;
    office.wait_for("office connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let office_api = office.control_addr.context("office's control API")?;
    let home_api = home.control_addr.context("home's control API")?;
    Ok(Two { server, home, office, office_api, home_api })
}

/// Visitor `i`'s entry (0 auto, 1 direct, 2 relay) in office's `/status`.
async fn visitor(b: &InNetns, api: SocketAddr, i: usize) -> Result<Value> {
    let status: Value = serde_json::from_str(&b.get(api, "/status").await?)?;
    Ok(status["visitors"][i].clone())
}

/// Polls until visitor `i`'s path is `path`, within [`PATH_DEADLINE`]; how long it took.
async fn path_becomes(b: &InNetns, api: SocketAddr, i: usize, path: &str) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let now = visitor(b, api, i).await?;
        if now["path"] == path {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < PATH_DEADLINE, "visitor {i} still {now} after {PATH_DEADLINE:?}, not {path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entry of home's "db" in the server's `/status`.
async fn db_on_server(public: &InNetns, server: &TestServer) -> Result<Value> {
    let api = server.handle.control_addr().context("the server's control API")?;
    let status: Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    let home = status["clients"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "home"));
    let services = home.context("home in /status")?["services"].as_array().context("services")?;
    Ok(services.iter().find(|s| s["name"] == "db").context("db")?.clone())
}

/// The server's UDP counters of packets carried (datagrams and stream packets, both ways).
async fn udp_on_server(public: &InNetns, server: &TestServer) -> Result<Value> {
    let api = server.handle.control_addr().context("the server's control API")?;
    let status: Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    let udp = &status["udp"];
    let keys = ["datagrams_sent", "datagrams_received", "stream_packets_sent", "stream_packets_received"];
    ensure!(keys.iter().all(|k| udp[k].is_u64()), "no UDP counters in the server's status: {udp}");
    Ok(keys.iter().map(|k| (k.to_string(), udp[k].clone())).collect::<serde_json::Map<_, _>>().into())
}

/// `len` bytes each way through `addr` (a visitor, in `b`'s namespace), checksummed.
async fn echo_through(b: &InNetns, addr: SocketAddr, len: usize, seed: u64) -> Result<()> {
    b.run(async move { bulk_echo(TcpStream::connect(addr).await?, len, seed).await }).await?
}

async fn stop(two: Two) -> Result<()> {
    let Two { mut server, mut home, mut office, .. } = two;
    office.stop().await?;
    home.stop().await?;
    server.stop().await
}

/// Test 1: two port-preserving NATs: the visitor connects directly; 64 MiB pass, checksummed,
/// and the server relays none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_two_port_preserving_nats_a_visitor_connects_directly() -> Result<()> {
    let Some((_bed, public, [a, b])) = netbed::two_homes_or_skip(Mapping::PortPreserving, Mapping::PortPreserving)?
    else {
        return Ok(());
    };
    let two = two(&public, &a, &b).await?;
    let took = path_becomes(&b, two.office_api, 0, "direct").await?;
    println!("direct path up after {took:?}");
    path_becomes(&b, two.office_api, 1, "direct").await?;
    let visitors = two.office.forward_addrs.clone();
    echo_through(&b, visitors[0], 64 << 20, 1).await?;
    echo_through(&b, visitors[1], 1 << 20, 2).await?;
    let db = db_on_server(&public, &two.server).await?;
    ensure!(db["bytes_in"] == 0 && db["bytes_out"] == 0, "the server relayed bytes of a direct visit: {db}");
    // Home saw the visitor come from the office's NAT, not from the server.
    let home: Value = serde_json::from_str(&a.get(two.home_api, "/status").await?)?;
    let peer = home["direct_visitors"][0]["peer"].as_str().unwrap_or_default().to_owned();
    ensure!(peer.starts_with(&netbed::NAT2_WAN.to_string()), "direct visitor from {peer}: {home}");
    // UDP: 2000 packets paced at one a millisecond; at least 99 % come back, and the server
    // carries none of them.
    path_becomes(&b, two.office_api, 3, "direct").await?;
    let udp_before = udp_on_server(&public, &two.server).await?;
    let dns = visitors[3];
    let back = b
        .run(async move {
            let user = wmproxy_tests::udp::user().await?;
            wmproxy_tests::udp::paced_echo(&user, dns, (2000, 1200), Duration::from_millis(1)).await
        })
        .await??;
    println!("UDP: {back} of 2000 packets came back directly");
    ensure!(back >= 1980, "{back} of 2000 UDP packets came back");
    let udp_after = udp_on_server(&public, &two.server).await?;
    ensure!(udp_before == udp_after, "the server carried UDP packets: {udp_before} then {udp_after}");
    // The relay-only visitor still goes through the server.
    echo_through(&b, visitors[2], 1 << 20, 3).await?;
    let db = db_on_server(&public, &two.server).await?;
    ensure!(db["bytes_in"] == 1 << 20, "the relayed visit: {db}");
    stop(two).await
}

/// Test 2: the service's NAT maps ports at random: `auto` works through the server at once and
/// reports why it is not direct; `direct` refuses with the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_random_mapping_nat_auto_falls_back_to_the_server() -> Result<()> {
    let Some((_bed, public, [a, b])) = netbed::two_homes_or_skip(Mapping::Random, Mapping::PortPreserving)? else {
        return Ok(());
    };
    let two = two(&public, &a, &b).await?;
    let started = Instant::now();
    echo_through(&b, two.office.forward_addrs[0], 1 << 20, 4).await?;
    let first = started.elapsed();
    ensure!(first < Duration::from_secs(3), "the first connection through `auto` took {first:?}");
    // The attempt fails within its budget and says why.
    let deadline = Instant::now() + PATH_DEADLINE;
    let failed = loop {
        let now = visitor(&b, two.office_api, 0).await?;
        if now["last_error"].is_string() {
            break now;
        }
        ensure!(Instant::now() < deadline, "no failure reported: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("auto after {:?}: {failed}", started.elapsed());
    ensure!(failed["path"] == "relayed", "{failed}");
    ensure!(failed["last_error"].as_str().is_some_and(|e| e.contains("answered within 3 s")), "{failed}");
    // `direct` refuses: the user's connection is closed without data.
    let addr = two.office.forward_addrs[1];
    let read = b
        .run(async move {
            let mut user = TcpStream::connect(addr).await?;
            user.write_all(b"hello").await?;
            let mut buf = [0u8; 8];
            anyhow::Ok(tokio::time::timeout(Duration::from_secs(10), user.read(&mut buf)).await)
        })
        .await??;
    ensure!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a `direct` visitor without a direct path answered: {read:?}");
    let status = visitor(&b, two.office_api, 1).await?;
    ensure!(status["path"] == "none" && status["last_error"].is_string(), "{status}");
    stop(two).await
}

/// Test 3: both clients behind one NAT (which does not hairpin): they connect directly at
/// their private addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_lan_the_clients_connect_at_their_private_addresses() -> Result<()> {
    if netbed::skip()? {
        return Ok(());
    }
    let bed = netbed::Netbed::start_shared_lan(Mapping::PortPreserving)?;
    let public = InNetns::enter(&bed.public())?;
    let (a, b) = (InNetns::enter(&bed.home())?, InNetns::enter(&bed.home2())?);
    let two = two(&public, &a, &b).await?;
    path_becomes(&b, two.office_api, 0, "direct").await?;
    echo_through(&b, two.office.forward_addrs[0], 8 << 20, 5).await?;
    let home: Value = serde_json::from_str(&a.get(two.home_api, "/status").await?)?;
    let peer = home["direct_visitors"][0]["peer"].as_str().unwrap_or_default().to_owned();
    ensure!(peer.starts_with(&netbed::HOME_MATE.to_string()), "direct visitor from {peer}: {home}");
    let db = db_on_server(&public, &two.server).await?;
    ensure!(db["bytes_in"] == 0, "the server relayed bytes: {db}");
    stop(two).await
}

/// Test 5: the path between the NATs is cut: a transfer in flight on it is aborted (an error,
/// not a clean end), new connections go through the server within seconds, and the visitor is
/// direct again once the path is mended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_direct_path_moves_to_the_server_and_back() -> Result<()> {
    let Some((bed, public, [a, b])) = netbed::two_homes_or_skip(Mapping::PortPreserving, Mapping::PortPreserving)?
    else {
        return Ok(());
    };
    let two = two(&public, &a, &b).await?;
    path_becomes(&b, two.office_api, 0, "direct").await?;
    let addr = two.office.forward_addrs[0];
    // A connection in flight: it has sent and read a little, and waits for more.
    let held = b.run(async move {
        let mut user = TcpStream::connect(addr).await?;
        user.write_all(b"before the cut").await?;
        let mut buf = [0u8; 14];
        user.read_exact(&mut buf).await?;
        anyhow::Ok(user)
    });
    let mut user = held.await??;
    bed.cut_between_nats(true)?;
    let cut = Instant::now();
    let ended = b
        .run(async move {
            let _ = user.write_all(b"after").await;
            let mut buf = [0u8; 8];
            tokio::time::timeout(Duration::from_secs(20), user.read(&mut buf)).await
        })
        .await?;
    ensure!(matches!(ended, Ok(Err(_))), "the connection in flight ended {ended:?}, not with an error");
    let relayed = path_becomes(&b, two.office_api, 0, "relayed").await? + Duration::ZERO;
    println!("relayed {:?} after the cut", cut.elapsed());
    let _ = relayed;
    echo_through(&b, addr, 1 << 20, 6).await?;
    bed.cut_between_nats(false)?;
    let back = path_becomes(&b, two.office_api, 0, "direct").await?;
    println!("direct again {back:?} after the path returned");
    echo_through(&b, addr, 1 << 20, 7).await?;
    stop(two).await
}
