//! `--netbed --private`: a private service reached directly and through the server (issue
//! 16), on a bed with two homes behind two port-preserving NATs, each NAT behind a delay line
//! of its own (`Netbed::separate_homes`): the two homes are the given RTT apart whether the
//! path is direct or goes through the public host, behind the same bottleneck.
//!
//! The service's client ("home") serves a sink and an echo on its own host as private
//! services; the visitor's client ("office") has one visitor of each in `direct` mode and one
//! in `relay` mode. The reference ("plain TCP") is the visitor's host uploading to a sink and
//! talking to an echo on the outside address of the service's NAT: the path of a direct
//! connection, without the tunnel.
//!
//! - Time to first byte: connect to the local port, send one byte, read it back (a new
//!   connection each time): p50 and p99.
//! - Bulk: Mbit/s uploading for `--secs`.
//! - The server's CPU per GiB moved: the CPU time of the public host's runtime thread (it runs
//!   the server and nothing else) over the bulk runs, from `/proc/thread-self/stat`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_config::secret::Secret;
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tests::netbed::{self, InNetns, Mapping, Netbed};
use wmproxy_tests::{TestClient, name, private, tcp_service};

use crate::{backends, micros, p50_p99};

const SECRET: &str = "bench-private-secret";

/// New connections per time-to-first-byte figure.
const FIRST_BYTES: usize = 50;

/// Prints the figures; `SKIPPED:` and why where no bed can be built.
pub async fn run(rtt: Duration, mbit: u32, secs: f64) -> Result<()> {
    if netbed::skip()? {
        return Ok(());
    }
    let bed = Netbed::start_two_homes(Mapping::PortPreserving, Mapping::PortPreserving)?;
    let public = InNetns::enter(&bed.public())?;
    let (home, office) = (InNetns::enter(&bed.home())?, InNetns::enter(&bed.home2())?);
    // Each NAT behind a line of a quarter of `rtt`: the homes are `rtt` apart, directly or
    // through the public host.
    bed.separate_homes(rtt / 4, mbit)?;
    // The reference: plain TCP from the visitor's host to the service's NAT (a sink and an
    // echo on its outside address), the same path as a direct connection.
    let nat = InNetns::enter(&bed.nat())?;
    let plain_sink = nat.run(backends::sink_at((netbed::NAT_WAN, 0).into())).await??;
    let plain_echo = nat.run(backends::echo_at((netbed::NAT_WAN, 0).into())).await??;
    for port in [plain_sink.port(), plain_echo.port()] {
        bed.nat_accepts_tcp(port)?;
    }
    let sink = home.run(backends::sink_at(([127, 0, 0, 1], 0).into())).await??;
    let echo = home.run(backends::echo_at(([127, 0, 0, 1], 0).into())).await??;

    let mut server = netbed::public_server(&public).await?;
    let mut service = server.client_config("home");
    for (service_name, local) in [("sink", sink), ("echo", echo)] {
        service.services.push(private(tcp_service(service_name, local, 0), Some(SECRET), &[]));
    }
    // The same sink as a public service too: a user on the visitor's host reaches it at the
    // server's public port (user → server over TCP, server → home over the tunnel).
    service.services.push(tcp_service("public-sink", sink, 0));
    let mut service = home.run(TestClient::start(service)).await??;
    service.wait_for("home connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let mut visitor = server.client_config("office");
    for (mode, service_name) in [
        (VisitMode::Direct, "sink"),
        (VisitMode::Relay, "sink"),
        (VisitMode::Direct, "echo"),
        (VisitMode::Relay, "echo"),
    ] {
        visitor.visitors.push(Visitor {
            name: name(&format!("{service_name}-{}", mode.as_str())),
            kind: wmproxy_wire::ServiceKind::Tcp,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            client: name("home"),
            service: name(service_name),
            secret_key: Some(Secret::new(SECRET)),
            mode,
        });
    }
    let mut visitor = office.run(TestClient::start(visitor)).await??;
    visitor.wait_for("office connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let [sink_direct, sink_relay, echo_direct, echo_relay] = visitor.forward_addrs[..] else {
        anyhow::bail!("four visitors, got {:?}", visitor.forward_addrs);
    };
    // The first direct connection waits for the direct path (mode "direct"): let it come up.
    office.run(first_byte(echo_direct)).await??;

    println!(
        "== a private service across two port-preserving NATs, every path {} ms RTT and {mbit} Mbit/s",
        rtt.as_millis()
    );
    println!("time to first byte (a new connection, one byte there and back), {FIRST_BYTES} connections:");
    let mut firsts = Vec::new();
    for (label, addr) in [("plain TCP", plain_echo), ("direct", echo_direct), ("relayed", echo_relay)] {
        let mut times = office.run(first_bytes(addr, FIRST_BYTES)).await??;
        let (p50, p99) = p50_p99(&mut times);
        firsts.push(p50);
        println!("  {label:<10} p50 {:>8.1} ms  p99 {:>8.1} ms", micros(p50) / 1e3, micros(p99) / 1e3);
    }
    println!("bulk upload, {secs:.0} s each; the server's CPU time per GiB moved:");
    let mut rates = Vec::new();
    let public_port = service.port_of("public-sink").await?;
    let public_sink = SocketAddr::from((netbed::PUBLIC, public_port));
    for (label, addr) in
        [("plain TCP", plain_sink), ("direct", sink_direct), ("relayed", sink_relay), ("public port", public_sink)]
    {
        let cpu_before = public.run(async { crate::cpu::thread() }).await??;
        let started = Instant::now();
        let mbit_s = office.run(crate::netbed::bulk_for(addr, Duration::from_secs_f64(secs))).await??;
        let gib = mbit_s * 1e6 / 8.0 * started.elapsed().as_secs_f64() / f64::from(1u32 << 30);
        let cpu = public.run(async { crate::cpu::thread() }).await?? - cpu_before;
        rates.push(mbit_s);
        let per_gib =
            if label == "plain TCP" { "(no server)".to_owned() } else { format!("{:.3} CPU-s/GiB", cpu / gib) };
        println!("  {label:<10} {mbit_s:>8.1} Mbit/s  {per_gib}");
    }
    println!(
        "ratios to plain TCP: first byte direct {:.2}×, relayed {:.2}×; bulk direct {:.2}×, relayed {:.2}×",
        micros(firsts[1]) / micros(firsts[0]),
        micros(firsts[2]) / micros(firsts[0]),
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
    visitor.stop().await?;
    service.stop().await?;
    server.stop().await
}

/// One connection to the echo at `addr`: one byte there and back.
async fn first_byte(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"x").await?;
    let mut back = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back)).await.context("no first byte")??;
    Ok(started.elapsed())
}

/// `n` of [`first_byte`], one after another.
async fn first_bytes(addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        times.push(first_byte(addr).await?);
    }
    Ok(times)
}
