//! `--netbed`: the tunnel on a shaped path (issue 14), in network namespaces (needs root; see
//! `wmproxy_tests::netbed`). A server on the public host; a client behind the NAT with local
//! forwards to a sink and an echo on the public host. Direct runs go from the same home host to
//! the same sink and echo, over the same path; only the tunnel differs.
//!
//! - The delay line's own cost: bulk and small-exchange latency on the unshaped path, without
//!   the line and with it at zero delay.
//! - The grid: bulk Mbit/s for each RTT × loss behind a bottleneck: direct TCP (the host's
//!   congestion controller) beside the tunnel with each QUIC controller.
//! - Head of line: small exchanges' p50/p99 on one connection while bulk runs on another:
//!   direct (two TCP connections), the multiplexed-TCP reference ([`crate::mux`], one TCP
//!   connection) and the tunnel (two QUIC streams), with each controller.
//! - With `--tcp-transport`, a tunnel on the TCP transport beside them (TLS over TCP, HTTP/2
//!   streams; the host's congestion controller).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use wmproxy_config::Congestion;
use wmproxy_tests::netbed::{self, InNetns, Mapping, Netbed, PUBLIC};
use wmproxy_tests::{TestClient, TestServer, forward_to};

use crate::{backends, micros, mux, p50_p99};

/// What `--netbed` measures.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Round-trip times of the grid, ms.
    pub rtts: Vec<u64>,
    /// Loss rates of the grid, percent each way (in steps of 0.1).
    pub losses: Vec<f64>,
    /// The bottleneck, Mbit/s each way.
    pub rate_mbit: u32,
    /// Seconds of sending per bulk run.
    pub secs: f64,
    /// The tunnel's congestion controllers to compare.
    pub controllers: Vec<Congestion>,
    /// RTT (ms) and loss (%) of the head-of-line figures.
    pub hol: (u64, f64),
    /// Small exchanges per head-of-line run.
    pub exchanges: usize,
    /// Also a tunnel on the TCP transport (TLS over TCP; the host's congestion controller).
    pub tcp_transport: bool,
}

/// One tunnel (server + client) with one congestion controller (or on the TCP transport:
/// `congestion` is then `None`), and its forwards.
struct Tunnel {
    congestion: Option<Congestion>,
    server: TestServer,
    client: TestClient,
    sink: SocketAddr,
    echo: SocketAddr,
}

/// Builds a bed and prints the figures; prints `SKIPPED:` and why where no bed can be built.
pub async fn run(settings: &Settings) -> Result<()> {
    if netbed::skip()? {
        return Ok(());
    }
    let bed = Netbed::start(Mapping::PortPreserving)?;
    let (public, home) = (InNetns::enter(&bed.public())?, InNetns::enter(&bed.home())?);
    let sink = public.run(backends::sink_at((PUBLIC, 0).into())).await??;
    let echo = public.run(backends::echo_at((PUBLIC, 0).into())).await??;
    let reference = public.run(mux::server((PUBLIC, 0).into())).await??;
    let host = home.run(async { std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control") }).await??;
    let host = host.trim().to_owned();

    println!("== the delay line's own cost: direct TCP, home → public, no shaping");
    let bare = line_cost(&home, sink, echo).await?;
    bed.set_delay(Duration::ZERO)?;
    let lined = line_cost(&home, sink, echo).await?;
    println!(
        "without the line: bulk {:>7.0} Mbit/s, 64-byte exchange p50 {:>6.0} µs | with it at 0 ms: {:>7.0} Mbit/s ({:.2}×), p50 {:>6.0} µs (+{:.0} µs)",
        bare.0,
        micros(bare.1),
        lined.0,
        lined.0 / bare.0,
        micros(lined.1),
        micros(lined.1) - micros(bare.1)
    );

    bed.set_rate(settings.rate_mbit)?;
    let ends = Ends { public: &public, home: &home, sink, echo };
    grid(&bed, &ends, settings, &host).await?;
    head_of_line(&bed, &ends, settings, &host, reference).await?;
    Ok(())
}

/// Bulk Mbit/s (3 s) and 64-byte exchange p50 (500), direct.
async fn line_cost(home: &InNetns, sink: SocketAddr, echo: SocketAddr) -> Result<(f64, Duration)> {
    let bulk = home.run(bulk_for(sink, Duration::from_secs(3))).await??;
    let mut times = home.run(exchanges(echo, 500)).await??;
    Ok((bulk, p50_p99(&mut times).0))
}

/// The hosts, and the sink and echo on the public host.
struct Ends<'a> {
    public: &'a InNetns,
    home: &'a InNetns,
    sink: SocketAddr,
    echo: SocketAddr,
}

impl Ends<'_> {
    /// A tunnel for each controller, started on the path as it is now: a connection's model
    /// of its path starts with the connection (a BBR-style controller keeps its minimum RTT
    /// for 10 s, so a tunnel opened at 0 ms and then moved to 150 ms says little).
    async fn tunnels(&self, settings: &Settings) -> Result<Vec<Tunnel>> {
        let mut tunnels = Vec::new();
        let quic = settings.controllers.iter().map(|&c| Some(c));
        for congestion in quic.chain(settings.tcp_transport.then_some(None)) {
            tunnels.push(tunnel(self.public, self.home, congestion, self.sink, self.echo).await?);
        }
        Ok(tunnels)
    }
}

/// Stops each tunnel's client, then its server.
async fn stop(tunnels: Vec<Tunnel>) -> Result<()> {
    for mut t in tunnels {
        t.client.stop().await?;
        t.server.stop().await?;
    }
    Ok(())
}

/// A server on the public host and a client on the home host, both sending with
/// `congestion` (`None`: on the TCP transport); the client forwards to `sink` and `echo`.
async fn tunnel(
    public: &InNetns,
    home: &InNetns,
    congestion: Option<Congestion>,
    sink: SocketAddr,
    echo: SocketAddr,
) -> Result<Tunnel> {
    let server = public
        .run(TestServer::start(move |f| {
            f.bind = (PUBLIC, 0).into();
            f.tcp_bind = Some(toml::Spanned::new(0..0, format!("{PUBLIC}:0")));
            f.public_bind = PUBLIC.into();
            f.egress.allow = vec![ipnet::IpNet::from(std::net::IpAddr::from(PUBLIC))];
            f.limits.congestion = congestion.unwrap_or_default();
        }))
        .await??;
    let mut config = server.client_config(&label(congestion).replace('/', "-"));
    match congestion {
        Some(congestion) => config.limits.congestion = congestion,
        None => config.transport = wmproxy_config::Transport::Tcp,
    }
    config.forwards.push(forward_to(sink));
    config.forwards.push(forward_to(echo));
    let mut client = home.run(TestClient::start(config)).await??;
    client.wait_for("connected", |s| matches!(s, wmproxy_client::ClientStatus::Connected { .. })).await?;
    let (sink, echo) = (client.forward_addrs[0], client.forward_addrs[1]);
    Ok(Tunnel { congestion, server, client, sink, echo })
}

async fn grid(bed: &Netbed, ends: &Ends<'_>, settings: &Settings, host: &str) -> Result<()> {
    println!(
        "== bulk, home → public, {} Mbit/s bottleneck, {:.0} s of sending per run: Mbit/s (tunnel/direct)",
        settings.rate_mbit, settings.secs
    );
    let mut head = format!("RTT ms | loss % | direct ({host:>5})");
    let quic = settings.controllers.iter().map(|&c| Some(c));
    for congestion in quic.chain(settings.tcp_transport.then_some(None)) {
        head += &format!(" | tunnel {:<9}       ", label(congestion));
    }
    println!("{head}");
    let (home, sink) = (ends.home, ends.sink);
    let time = Duration::from_secs_f64(settings.secs);
    for &rtt in &settings.rtts {
        bed.set_delay(Duration::from_millis(rtt))?;
        bed.set_loss(0)?;
        let tunnels = ends.tunnels(settings).await?;
        for &loss in &settings.losses {
            bed.set_loss(per_mille(loss))?;
            let direct = home.run(bulk_for(sink, time)).await??;
            let mut row = format!("{rtt:>6} | {loss:>6.1} | {direct:>14.1}");
            for t in &tunnels {
                let through = home.run(bulk_for(t.sink, time)).await??;
                row += &format!(" | {through:>7.1} ({:>4.2}×)", through / direct);
                row += "         ";
            }
            println!("{row}");
        }
        stop(tunnels).await?;
    }
    bed.set_loss(0)
}

/// A controller's config name, or `tls/tcp` for the TCP transport.
fn label(congestion: Option<Congestion>) -> String {
    let Some(congestion) = congestion else { return "tls/tcp".to_owned() };
    toml::Value::try_from(congestion).map(|v| v.as_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

async fn head_of_line(
    bed: &Netbed,
    ends: &Ends<'_>,
    settings: &Settings,
    host: &str,
    reference: SocketAddr,
) -> Result<()> {
    let (rtt, loss) = settings.hol;
    bed.set_delay(Duration::from_millis(rtt))?;
    bed.set_loss(0)?;
    let tunnels = ends.tunnels(settings).await?;
    bed.set_loss(per_mille(loss))?;
    let (home, sink, echo) = (ends.home, ends.sink, ends.echo);
    println!(
        "== head of line: {} 64-byte exchanges on one connection while a bulk upload runs on another, RTT {rtt} ms, loss {loss} %, {} Mbit/s",
        settings.exchanges, settings.rate_mbit
    );
    let n = settings.exchanges;
    let show = |name: &str, mut times: Vec<Duration>| {
        let (p50, p99) = p50_p99(&mut times);
        println!("{name:<38} p50 {:>8.1} ms | p99 {:>8.1} ms", millis(p50), millis(p99));
    };
    show(&format!("direct, two TCP connections ({host})"), home.run(beside_bulk(sink, echo, n)).await??);
    show(&format!("multiplexed, one TCP connection ({host})"), home.run(muxed(reference, n)).await??);
    for t in &tunnels {
        let label = match t.congestion {
            Some(_) => format!("tunnel, two QUIC streams ({})", label(t.congestion)),
            None => format!("tunnel, two HTTP/2 streams over TLS/TCP ({host})"),
        };
        show(&label, home.run(beside_bulk(t.sink, t.echo, n)).await??);
    }
    bed.set_loss(0)?;
    stop(tunnels).await
}

/// Bulk runs this long before the exchanges start: past its start-up (10 round trips at
/// 150 ms), so that the figures are of the steady state.
const RAMP: Duration = Duration::from_secs(2);

/// `n` exchanges with `echo` while a bulk upload to `sink` runs, each on its own connection.
async fn beside_bulk(sink: SocketAddr, echo: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let stop = CancellationToken::new();
    let bulk = tokio::spawn(bulk_until(sink, stop.clone()));
    tokio::time::sleep(RAMP).await;
    let times = exchanges(echo, n).await;
    stop.cancel();
    bulk.await??;
    times
}

/// `n` exchanges on stream 1 of a [`mux`] connection while stream 0 carries bulk.
async fn muxed(reference: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let mut client = mux::Client::connect(reference).await?;
    let stop = CancellationToken::new();
    let bulk = client.bulk(stop.clone());
    tokio::time::sleep(RAMP).await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let request = [i as u8; 64];
        tokio::time::timeout(EXCHANGE_LIMIT, client.exchange(&request)).await.context("an exchange stalled")??;
        times.push(started.elapsed());
    }
    stop.cancel();
    bulk.await??;
    Ok(times)
}

/// How long one exchange may take before the run fails.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// `n` sequential 64-byte exchanges with the echo at `addr`, on one connection; their times.
async fn exchanges(addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut times = Vec::with_capacity(n);
    let mut back = [0u8; 64];
    for i in 0..n {
        let request = [i as u8; 64];
        let started = Instant::now();
        let exchange = async {
            s.write_all(&request).await?;
            s.read_exact(&mut back).await
        };
        tokio::time::timeout(EXCHANGE_LIMIT, exchange).await.context("an exchange stalled")??;
        ensure!(back == request, "the echo differs");
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Uploads to the sink at `addr` for `time`, then waits for its count; Mbit/s over the whole
/// run (connect to the count).
pub(crate) async fn bulk_for(addr: SocketAddr, time: Duration) -> Result<f64> {
    let stop = CancellationToken::new();
    let started = Instant::now();
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(time).await;
            stop.cancel();
        }
    });
    let sent = bulk_until(addr, stop).await;
    timer.abort();
    Ok(sent? as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e6)
}

/// Uploads to the sink at `addr` until `stop`, half-closes and waits for the sink's count (it
/// must match); returns the bytes sent.
async fn bulk_until(addr: SocketAddr, stop: CancellationToken) -> Result<u64> {
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        tokio::select! {
            written = s.write_all(&chunk) => { written?; sent += chunk.len() as u64 }
            () = stop.cancelled() => break,
        }
    }
    // A write cut off by the stop may have sent part of its chunk: the sink's count is the
    // truth, and it must be at least what completed.
    s.shutdown().await?;
    let counted = tokio::time::timeout(Duration::from_secs(120), s.read_u64()).await.context("the sink's count")??;
    ensure!(counted >= sent, "the sink counted {counted} of {sent} bytes");
    Ok(counted)
}

fn per_mille(percent: f64) -> u32 {
    (percent * 10.0).round().clamp(0.0, 1000.0) as u32
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
