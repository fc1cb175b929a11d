//! The network test bed itself (issue 14, first part): the home host reaches the public host
//! only through its NAT, which masquerades it; nothing leaves the bed; the NAT's loss setting
//! drops what it says; the namespaces are gone once the bed is dropped; and a real server and
//! client run in it, the client behind the NAT. Skipped, saying why, where the bed cannot be
//! built (not root, a tool missing).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wmproxy_tests::netbed::{self, Mapping, Netbed};

/// A TCP server on the public host (port 7000) that answers each connection with the
/// address it came from.
const WHO_AM_I: &str = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('198.18.0.1', 7000))\ns.listen(16)\nwhile True:\n    c, a = s.accept()\n    c.sendall(a[0].encode())\n    c.close()\n";

/// Connects to `addr` within `timeout_secs` and prints what it answers, or the error.
fn ask(addr: &str, timeout_secs: f32) -> String {
    format!(
        "import socket\ntry:\n    c = socket.create_connection({addr}, timeout={timeout_secs})\n    print(c.recv(64).decode())\n\
         except OSError as e:\n    print('error', e)\n"
    )
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn answer(bed: &Netbed, ns: &str, script: &str) -> Result<String> {
    let out = bed.exec(ns, &["python3", "-c", script])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn home_reaches_public_through_the_nat_and_nothing_else() -> Result<()> {
    if netbed::skip()? {
        return Ok(());
    }
    let bed = Netbed::start(Mapping::Random)?;
    let names = bed.namespaces();
    let server = bed.command(&bed.public(), &["python3", "-c", WHO_AM_I]).stdout(Stdio::null()).spawn()?;
    let _server = Killed(server);

    // Readiness: poll until the server answers (it starts in well under a second).
    let public = format!("('{}', 7000)", netbed::PUBLIC);
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = answer(&bed, &bed.home(), &ask(&public, 2.0))?;
        if !seen.starts_with("error") || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(seen == netbed::NAT_WAN.to_string(), "the public host saw {seen:?}, not the NAT's address");

    // No way out of the bed, either side: no route past it.
    let outside = answer(&bed, &bed.home(), &ask("('192.0.2.1', 80)", 2.0))?;
    ensure!(outside.starts_with("error"), "the home host reached 192.0.2.1: {outside}");
    let inside = answer(&bed, &bed.public(), &ask(&format!("('{}', 22)", netbed::HOME), 2.0))?;
    ensure!(inside.contains("unreachable"), "the public host reached the home host directly: {inside}");

    // Loss: all of it is a blackhole; none restores the path.
    bed.set_loss(1000)?;
    let lost = answer(&bed, &bed.home(), &ask(&public, 1.0))?;
    ensure!(lost.contains("timed out"), "through a blackhole: {lost}");
    bed.set_loss(0)?;
    ensure!(answer(&bed, &bed.home(), &ask(&public, 2.0))? == netbed::NAT_WAN.to_string());
    bed.set_rate(200)?;
    bed.set_mtu(1280)?;
    bed.set_udp_timeout(30)?;
    bed.flush_mappings()?;
    ensure!(answer(&bed, &bed.home(), &ask(&public, 2.0))? == netbed::NAT_WAN.to_string());

    drop(_server);
    drop(bed);
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    let left = String::from_utf8_lossy(&left.stdout);
    if names.iter().any(|n| left.contains(n.as_str())) {
        bail!("namespaces left behind: {left}");
    }
    Ok(())
}

/// The tunnel over the bed: a server on the public host, a client behind the NAT publishing a
/// service of its home network; a user on the public host reaches it, and the server sees the
/// client at the NAT's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_behind_the_nat_is_published_on_the_public_host() -> Result<()> {
    use wmproxy_tests::{TestClient, backend, tcp_service};
    let Some((_bed, public, home)) = netbed::start_or_skip(Mapping::Random)? else { return Ok(()) };
    let mut server = netbed::public_server(&public).await?;
    let api = server.handle.control_addr().context("the control API")?;
    let echo = home.run(backend::echo()).await??;
    let mut config = server.client_config("behind-nat");
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = home.run(TestClient::start(config)).await??;
    let port = client.port_of("echo").await?;

    public.echo_through(port, 256 * 1024, 7).await?;
    let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    let address = status["clients"][0]["address"].as_str().unwrap_or_default().to_owned();
    ensure!(address.starts_with(&format!("{}:", netbed::NAT_WAN)), "the server saw the client at {address}");

    client.stop().await?;
    server.stop().await?;
    Ok(())
}

/// The delay line delays by what it is told and loses nothing: 4,000 UDP datagrams of 1,200
/// bytes, sent from the home host at 4,000 a second and echoed by the public host, all come
/// back; none sooner than the round trip the line was set to, and half within 5 ms of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_line_delays_by_what_it_is_told_and_loses_nothing() -> Result<()> {
    use tokio::net::UdpSocket;
    const RTT: Duration = Duration::from_millis(40);
    const COUNT: usize = 4000;
    let Some((bed, public, home)) = netbed::start_or_skip(Mapping::PortPreserving)? else { return Ok(()) };
    bed.set_delay(RTT)?;
    let echo = public.run(wmproxy_tests::udp::echo_at((netbed::PUBLIC, 0).into())).await??;
    let rtts = home.run(async move {
        let socket = UdpSocket::from_std(wmproxy_tunnel::transport::bind_udp("0.0.0.0:0".parse()?)?)?;
        socket.connect(echo).await?;
        // One round trip first, so that neighbours are resolved: packets held meanwhile would
        // overflow the kernel's queue of unresolved ones, which is not the line's loss.
        wmproxy_tests::udp::round_trip(&socket, echo, b"warm up", |_| Ok(())).await?;
        let start = tokio::time::Instant::now();
        // Each datagram: its index and when it left, in microseconds since `start`.
        let send = async {
            for i in 0..COUNT {
                if i % 40 == 0 {
                    tokio::time::sleep_until(start + Duration::from_millis(i as u64 / 4)).await;
                }
                let mut datagram = vec![0u8; 1200];
                datagram[..8].copy_from_slice(&(i as u64).to_be_bytes());
                datagram[8..16].copy_from_slice(&(start.elapsed().as_micros() as u64).to_be_bytes());
                socket.send(&datagram).await?;
            }
            anyhow::Ok(())
        };
        let receive = async {
            let (mut rtts, mut buf) = (vec![None; COUNT], vec![0u8; 2048]);
            // Until every datagram is back, or none has come for a second.
            while rtts.iter().any(Option::is_none) {
                let Ok(n) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await else { break };
                ensure!(n? == 1200, "a datagram came back cut");
                let i = usize::try_from(u64::from_be_bytes(buf[..8].try_into()?))?;
                let sent = Duration::from_micros(u64::from_be_bytes(buf[8..16].try_into()?));
                *rtts.get_mut(i).context("an index never sent")? = Some(start.elapsed() - sent);
            }
            anyhow::Ok(rtts)
        };
        let (sent, rtts) = tokio::join!(send, receive);
        sent?;
        rtts
    });
    let rtts = rtts.await??;
    let mut back: Vec<Duration> = rtts.iter().flatten().copied().collect();
    back.sort();
    ensure!(back.len() == COUNT, "{} of {COUNT} datagrams came back through the line", back.len());
    let (min, p50, p99) = (back[0], back[COUNT / 2], back[COUNT * 99 / 100]);
    println!("delay line at {RTT:?}: round trips min {min:?}, p50 {p50:?}, p99 {p99:?}; {:?}", bed.delay_counts());
    ensure!(min >= RTT, "a round trip of {min:?}, under the line's {RTT:?}");
    ensure!(p50 <= RTT + Duration::from_millis(5), "median round trip {p50:?} for a line of {RTT:?}");
    ensure!(bed.delay_counts().lost == 0, "the line lost frames: {:?}", bed.delay_counts());
    Ok(())
}

/// Two homes behind two NATs, one public server (the helper later work starts from): each
/// home's client reaches the server, which sees each at its own NAT's address, and neither
/// home can reach the other's private address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homes_behind_two_nats_reach_one_public_server() -> Result<()> {
    use wmproxy_client::ClientStatus;
    use wmproxy_tests::TestClient;
    let Some((bed, public, [home, home2])) = netbed::two_homes_or_skip(Mapping::Random, Mapping::PortPreserving)?
    else {
        return Ok(());
    };
    let mut server = netbed::public_server(&public).await?;
    let api = server.handle.control_addr().context("the control API")?;
    let mut clients = Vec::new();
    for (name, runtime) in [("first", &home), ("second", &home2)] {
        let mut client = runtime.run(TestClient::start(server.client_config(name))).await??;
        client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
        clients.push(client);
    }
    let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    let mut seen: Vec<String> = status["clients"]
        .as_array()
        .context("clients")?
        .iter()
        .map(|c| format!("{} {}", c["name"].as_str().unwrap_or_default(), c["address"].as_str().unwrap_or_default()))
        .collect();
    seen.sort();
    ensure!(seen.len() == 2, "the server holds {seen:?}");
    ensure!(seen[0].starts_with(&format!("first {}:", netbed::NAT_WAN)), "{seen:?}");
    ensure!(seen[1].starts_with(&format!("second {}:", netbed::NAT2_WAN)), "{seen:?}");
    let across = answer(&bed, &bed.home(), &ask(&format!("('{}', 22)", netbed::HOME2), 1.0))?;
    ensure!(across.starts_with("error"), "the first home reached the second's private address: {across}");
    for mut client in clients {
        client.stop().await?;
    }
    server.stop().await?;
    Ok(())
}
