//! `wmproxy-bench`: throughput, new-connection latency and idle memory (TCP), paced load and
//! latency (UDP), direct vs through the tunnel, in one process on loopback. Every figure is
//! printed next to its direct counterpart.
//!
//! Run: `cargo run --release -p wmproxy-bench --locked` (see `bench/README.md`). With
//! `--netbed` it takes the shaped-path figures instead ([`netbed`]; needs root).

mod backends;
mod cpu;
mod groups;
mod held;
mod mux;
mod muxes;
mod netbed;
mod private;
mod proxies;
mod quic;
mod udp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wmproxy_tests::{TestClient, TestServer, tcp_service};

/// Which figures to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Everything.
    All,
    /// The TCP figures.
    Tcp,
    /// The UDP figures.
    Udp,
    /// The load-balancing figures.
    Groups,
    /// The proxy figures.
    Proxies,
    /// Many connections held through one client, and one past the limit (separate processes:
    /// the real server and client binaries, built next to this one).
    Held,
    /// HTTP/2 beside yamux as the TCP transport's stream multiplexer (child processes of this
    /// binary).
    Muxes,
    /// Bare QUIC streams over one connection and over several (would a pool pay off?).
    Pool,
}

/// Figures for wmproxy's TCP and UDP paths on loopback.
#[derive(Debug, Parser)]
struct Cli {
    /// Which figures to take.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// Offered UDP rates, Mbit/s (each direct and through the tunnel).
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    udp_rates: Vec<f64>,
    /// Seconds per UDP rate step.
    #[arg(long, default_value_t = 2.0)]
    udp_secs: f64,
    /// UDP payload of the paced runs, bytes.
    #[arg(long, default_value_t = 1200)]
    udp_payload: usize,
    /// MiB per bulk run (one stream; split across streams in the parallel run).
    #[arg(long, default_value_t = 1024)]
    bulk_mib: usize,
    /// New-connection samples.
    #[arg(long, default_value_t = 2000)]
    connects: usize,
    /// Idle connections for the memory figure.
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// Direct/tunnel pairs per bulk figure; medians are printed (loopback throughput drifts).
    #[arg(long, default_value_t = 7)]
    repeat: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The congestion controller of the loopback TCP figures' tunnel (bbr, cubic, newreno,
    /// quinn-bbr).
    #[arg(long, default_value = "bbr", value_parser = congestion)]
    congestion: wmproxy_config::Congestion,
    /// The shaped-path figures (network namespaces, root) instead of the loopback ones.
    #[arg(long)]
    netbed: bool,
    /// `--netbed`: round-trip times of the grid, ms.
    #[arg(long, value_delimiter = ',', default_value = "10,50,150")]
    rtts: Vec<u64>,
    /// `--netbed`: loss rates of the grid, percent each way.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,1,3")]
    losses: Vec<f64>,
    /// `--netbed`: the bottleneck, Mbit/s.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// `--netbed`: seconds of sending per bulk run.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// `--netbed`: the tunnel's congestion controllers (cubic, newreno, bbr).
    #[arg(long, value_delimiter = ',', default_value = "cubic,newreno,bbr", value_parser = congestion)]
    controllers: Vec<wmproxy_config::Congestion>,
    /// `--netbed`: RTT (ms) of the head-of-line figures.
    #[arg(long, default_value_t = 50)]
    hol_rtt: u64,
    /// `--netbed`: loss (%) of the head-of-line figures.
    #[arg(long, default_value_t = 1.0)]
    hol_loss: f64,
    /// `--netbed`: small exchanges per head-of-line run.
    #[arg(long, default_value_t = 100)]
    exchanges: usize,
    /// `--netbed`: a tunnel on the TCP transport too (TLS over TCP), beside the QUIC ones.
    #[arg(long)]
    tcp_transport: bool,
    /// `--netbed`: instead of the grid, a private service reached directly and through the
    /// server across two NATs (RTT from `--hol-rtt`, bottleneck from `--rate`).
    #[arg(long)]
    private: bool,
    /// `--only held`: connections held at once. At most what a process may open (the server
    /// and the client each hold one socket per connection).
    #[arg(long, default_value_t = 19_900)]
    held: usize,
    /// `--only held`: the server's `max_streams_per_client` (default: `--held`, so that one
    /// more connection is refused).
    #[arg(long)]
    stream_limit: Option<u32>,
    /// Internal: runs as one of `--only held`'s child processes.
    #[arg(long, num_args = 1.., hide = true)]
    role: Option<Vec<String>>,
    /// Internal: runs one multiplexer's `--only muxes` figures.
    #[arg(long, hide = true)]
    mux_child: Option<String>,
}

/// A congestion controller by its config name.
fn congestion(name: &str) -> Result<wmproxy_config::Congestion, String> {
    #[derive(serde::Deserialize)]
    struct One {
        c: wmproxy_config::Congestion,
    }
    toml::from_str::<One>(&format!("c = {name:?}")).map(|one| one.c).map_err(|e| e.message().to_owned())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    wmproxy_tests::init_tracing();
    tokio::runtime::Builder::new_multi_thread().worker_threads(cli.workers).enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    if let Some(role) = &cli.role {
        return held::child(role).await;
    }
    if let Some(name) = &cli.mux_child {
        return muxes::child(name, cli.bulk_mib, cli.repeat).await;
    }
    if cli.only == Only::Muxes {
        return muxes::run(cli.bulk_mib, cli.repeat).await;
    }
    if cli.only == Only::Pool {
        return quic::pool(cli.bulk_mib * 1024 * 1024, cli.repeat).await;
    }
    if cli.only == Only::Held {
        let limit = cli.stream_limit.unwrap_or(u32::try_from(cli.held)?);
        return held::run(held::Settings { held: cli.held, limit }).await;
    }
    if cli.netbed && cli.private {
        return private::run(Duration::from_millis(cli.hol_rtt), cli.rate, cli.secs).await;
    }
    if cli.netbed {
        let settings = netbed::Settings {
            rtts: cli.rtts.clone(),
            losses: cli.losses.clone(),
            rate_mbit: cli.rate,
            secs: cli.secs,
            controllers: cli.controllers.clone(),
            hol: (cli.hol_rtt, cli.hol_loss),
            exchanges: cli.exchanges,
            tcp_transport: cli.tcp_transport,
        };
        return netbed::run(&settings).await;
    }
    if matches!(cli.only, Only::All | Only::Tcp) {
        run_tcp(&cli).await?;
    }
    if matches!(cli.only, Only::All | Only::Udp) {
        run_udp(&cli).await?;
    }
    if matches!(cli.only, Only::All | Only::Groups) {
        run_groups(&cli).await?;
    }
    if matches!(cli.only, Only::All | Only::Proxies) {
        run_proxies(&cli).await?;
    }
    Ok(())
}

async fn run_proxies(cli: &Cli) -> Result<()> {
    use proxies::Via;
    let (_server, _client, socks, http) = proxies::setup().await?;
    let (sink, echo) = (backends::sink().await?, backends::echo().await?);
    let bytes = cli.bulk_mib * 1024 * 1024;
    println!("== bulk upload through the client's proxies (egress at the server), {} MiB per run", cli.bulk_mib);
    for (name, via) in [("SOCKS5", Via::Socks5(socks)), ("HTTP CONNECT", Via::HttpConnect(http))] {
        let (mut directs, mut tunnels, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..cli.repeat.max(1) {
            let direct = proxies::bulk(Via::Direct, sink, bytes).await?;
            let through = proxies::bulk(via, sink, bytes).await?;
            directs.push(direct);
            tunnels.push(through);
            ratios.push(through / direct);
        }
        println!(
            "{name}: direct {:>6.2} Gbit/s | proxy {:>5.2} Gbit/s | ratio {:>5.1} % (median of {} pairs)",
            median(&mut directs),
            median(&mut tunnels),
            100.0 * median(&mut ratios),
            cli.repeat.max(1)
        );
    }
    println!("== time to first byte (connect, proxy handshake, 1-byte echo), {} samples", cli.connects);
    let direct = proxies::first_byte(Via::Direct, echo, cli.connects).await?;
    for (name, via) in [("SOCKS5", Via::Socks5(socks)), ("HTTP CONNECT", Via::HttpConnect(http))] {
        println!("-- {name}");
        print_percentiles(direct, proxies::first_byte(via, echo, cli.connects).await?);
    }
    Ok(())
}

async fn run_groups(cli: &Cli) -> Result<()> {
    use wmproxy_config::Policy;
    println!("== picking a backend (the policy alone), ns per pick");
    for policy in [Policy::RoundRobin, Policy::WeightedRoundRobin, Policy::LeastConnections, Policy::IpHash] {
        let one = groups::pick_ns(policy, 1, 1_000_000);
        let many = groups::pick_ns(policy, 64, 200_000);
        println!("{policy:?}: 1 backend {one:>6.1} ns | 64 backends {many:>7.1} ns");
    }
    println!("== new connection (connect + 1-byte echo) through a group vs a plain service, {} samples", cli.connects);
    for n in [1usize, 64] {
        let (_server, _client, group, plain) = groups::group_of(n).await?;
        let direct = connect_latency(plain, cli.connects).await?;
        let through = connect_latency(group, cli.connects).await?;
        println!("-- group of {n} backend(s) (\"direct\" = the same backend as a plain service)");
        print_percentiles(direct, through);
    }
    println!("== recovery: one of two backends dies; a user connects every 5 ms for 4 s, no retry");
    for (name, passive, active) in [
        ("passive only (max_fails 1)", true, None),
        ("active only, 1 s interval, fall 2", false, Some(Duration::from_secs(1))),
        ("passive + active 1 s", true, Some(Duration::from_secs(1))),
    ] {
        let (failed, last) = groups::recovery(passive, active, Duration::from_secs(4)).await?;
        println!("{name}: {failed} failed connection(s), last {:.1} ms after the death", last.as_secs_f64() * 1e3);
    }
    Ok(())
}

async fn run_udp(cli: &Cli) -> Result<()> {
    let echo = wmproxy_tests::udp::echo().await?;
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("bench-udp");
    config.services.push(wmproxy_tests::udp::service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let tunnel_echo = SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));
    println!("server tunnel endpoint {}, public UDP port {tunnel_echo}, UDP echo {echo}", server.addr);
    // Warm the path (MTU discovery raises the datagram limit above 1,200 bytes within a few
    // round trips; until then large packets ride the flow stream).
    udp::paced(tunnel_echo, 10.0, cli.udp_payload, Duration::from_millis(300)).await?;

    let step = Duration::from_secs_f64(cli.udp_secs);
    println!(
        "== UDP echo, {}-byte payloads, paced, {:.1} s per step (loss counts both ways)",
        cli.udp_payload, cli.udp_secs
    );
    for &rate in &cli.udp_rates {
        let direct = udp::paced(echo, rate, cli.udp_payload, step).await?;
        let before = server.handle.udp_stats();
        let tunnel = udp::paced(tunnel_echo, rate, cli.udp_payload, step).await?;
        let after = server.handle.udp_stats();
        println!(
            "offered {rate:>5.0} Mbit/s: direct {:>6.1} Mbit/s, loss {:>5.2} % | tunnel {:>6.1} Mbit/s, loss {:>5.2} % | ratio {:>5.1} % (server: {} datagrams out, {} on the stream)",
            direct.delivered_mbps,
            direct.loss_percent(),
            tunnel.delivered_mbps,
            tunnel.loss_percent(),
            100.0 * tunnel.delivered_mbps / direct.delivered_mbps.max(f64::MIN_POSITIVE),
            after.datagrams_sent - before.datagrams_sent,
            after.stream_packets_sent - before.stream_packets_sent,
        );
    }
    let c = client.udp.snapshot();
    let s = server.handle.udp_stats();
    println!(
        "drops: server socket {} queue {} unknown {} | client socket {} queue {} unknown {}",
        s.dropped_socket,
        s.dropped_queue_full,
        s.dropped_unknown_flow,
        c.dropped_socket,
        c.dropped_queue_full,
        c.dropped_unknown_flow
    );

    println!("== UDP request → reply, 64-byte payloads, {} samples", cli.connects);
    let direct = udp::latency(echo, cli.connects, 64).await?;
    let tunnel = udp::latency(tunnel_echo, cli.connects, 64).await?;
    print_percentiles((direct.0, direct.1), (tunnel.0, tunnel.1));
    println!("lost: direct {} | tunnel {}", direct.2, tunnel.2);
    Ok(())
}

async fn run_tcp(cli: &Cli) -> Result<()> {
    let sink = backends::sink().await?;
    let echo = backends::echo().await?;
    // Every user here is 127.0.0.1: the idle figure holds more connections than one user may.
    let server = TestServer::start(|f| {
        f.limits.max_connections_per_user = 1_000_000;
        f.limits.congestion = cli.congestion;
    })
    .await?;
    let mut config = server.client_config("bench");
    config.limits.congestion = cli.congestion;
    config.services.push(tcp_service("sink", sink, 0));
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let tunnel_sink = SocketAddr::from(([127, 0, 0, 1], client.port_of("sink").await?));
    let tunnel_echo = SocketAddr::from(([127, 0, 0, 1], client.port_of("echo").await?));

    println!("== RSS of {} idle connections (server + client + backends + users, one process)", cli.idle);
    // First in the process, tunnel before direct: memory freed by an earlier phase would be
    // reused by the allocator and hide what this one costs.
    let tunnel = idle_rss(tunnel_echo, cli.idle).await?;
    let direct = idle_rss(echo, cli.idle).await?;
    let per = |b: i64| b as f64 / cli.idle as f64 / 1024.0;
    println!(
        "direct {:>6.2} KiB/conn | tunnel {:>6.2} KiB/conn | server + client {:>6.2} KiB/conn",
        per(direct),
        per(tunnel),
        per(tunnel - direct)
    );

    let bytes = cli.bulk_mib * 1024 * 1024;
    println!("== bulk TCP upload, {} MiB per run", cli.bulk_mib);
    // CPU per GiB tells where the time goes when every run is CPU-bound (see `cpu`): a direct
    // run is one TCP hop on loopback; the tunnel is two hops (user → server, client → backend)
    // plus QUIC between them; the ceiling is QUIC alone.
    let mut costs = Vec::new();
    for streams in [1usize, 8] {
        // Direct and tunnel runs alternate, and the ratio is taken per pair: loopback throughput
        // drifts by tens of percent over seconds, and pairing cancels most of that drift.
        let (mut directs, mut tunnels, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut direct_cpu, mut tunnel_cpu) = (Vec::new(), Vec::new());
        for _ in 0..cli.repeat.max(1) {
            let (direct, cpu) = cpu_per_gib(bytes, bulk(sink, bytes, streams)).await?;
            direct_cpu.push(cpu);
            let (tunnel, cpu) = cpu_per_gib(bytes, bulk(tunnel_sink, bytes, streams)).await?;
            tunnel_cpu.push(cpu);
            directs.push(direct);
            tunnels.push(tunnel);
            ratios.push(tunnel / direct);
        }
        println!(
            "{streams} stream(s): direct {:>6.2} Gbit/s | tunnel {:>5.2} Gbit/s | ratio {:>5.1} % (median of {} pairs; tunnel min {:.2}, max {:.2})",
            median(&mut directs),
            median(&mut tunnels),
            100.0 * median(&mut ratios),
            cli.repeat.max(1),
            tunnels.iter().copied().fold(f64::INFINITY, f64::min),
            tunnels.iter().copied().fold(0.0, f64::max),
        );
        let (direct_cpu, tunnel_cpu) = (median(&mut direct_cpu), median(&mut tunnel_cpu));
        println!("  CPU-s per GiB (this process, all threads): direct {direct_cpu:.3} | tunnel {tunnel_cpu:.3}");
        costs.push((direct_cpu, tunnel_cpu));
    }

    let (mut bare, mut bare_cpu) = (Vec::new(), Vec::new());
    for _ in 0..cli.repeat.max(1) {
        let (rate, cpu) = cpu_per_gib(bytes, quic::bare_stream(bytes)).await?;
        bare.push(rate);
        bare_cpu.push(cpu);
    }
    let bare_cpu = median(&mut bare_cpu);
    println!(
        "ceiling: one bare quinn stream in this process (no TCP legs) {:>5.2} Gbit/s (median of {}), {bare_cpu:.3} CPU-s per GiB",
        median(&mut bare),
        cli.repeat.max(1)
    );
    if let Some(&(hop, tunnel)) = costs.first() {
        println!(
            "one stream's cost: tunnel {tunnel:.3} = two TCP hops {:.3} + QUIC {bare_cpu:.3} + the relay's own {:.3} CPU-s per GiB; \
             at equal CPU the tunnel moves {:.0} % of what bare QUIC does",
            2.0 * hop,
            tunnel - 2.0 * hop - bare_cpu,
            100.0 * bare_cpu / tunnel
        );
    }

    println!("== new connection (connect + 1-byte echo), {} samples", cli.connects);
    let direct = connect_latency(echo, cli.connects).await?;
    let tunnel = connect_latency(tunnel_echo, cli.connects).await?;
    print_percentiles((direct.0, direct.1), (tunnel.0, tunnel.1));

    Ok(())
}

/// The median of `values` (sorted in place); 0 for none.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Prints p50 and p99, direct beside tunnel, and what the tunnel adds.
fn print_percentiles(direct: (Duration, Duration), tunnel: (Duration, Duration)) {
    for (name, d, t) in [("p50", direct.0, tunnel.0), ("p99", direct.1, tunnel.1)] {
        println!(
            "{name}: direct {:>7.1} µs | tunnel {:>7.1} µs | added {:>7.1} µs",
            micros(d),
            micros(t),
            micros(t) - micros(d)
        );
    }
}

/// The p50 and p99 of `times` (sorted in place); zero for none.
fn p50_p99(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1))).copied();
    (at(0.50).unwrap_or_default(), at(0.99).unwrap_or_default())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Uploads `bytes` split over `streams` connections; returns Gbit/s of payload.
async fn bulk(addr: SocketAddr, bytes: usize, streams: usize) -> Result<f64> {
    let per = bytes / streams;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            backends::upload_to_sink(&mut s, per).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * streams) as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9)
}

/// Runs `run` (which moves `bytes` and returns Gbit/s) and returns its rate beside the CPU
/// seconds this process spent per GiB moved meanwhile.
async fn cpu_per_gib(bytes: usize, run: impl Future<Output = Result<f64>>) -> Result<(f64, f64)> {
    let before = cpu::process()?;
    let rate = run.await?;
    let spent = cpu::process()? - before;
    Ok((rate, spent / (bytes as f64 / f64::from(1u32 << 30))))
}

/// Connect + 1-byte echo to `addr`, sequentially; returns (p50, p99).
async fn connect_latency(addr: SocketAddr, samples: usize) -> Result<(Duration, Duration)> {
    proxies::first_byte(proxies::Via::Direct, addr, samples).await
}

/// Resident set size of this process, bytes.
fn rss() -> Result<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: i64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4096)
}

/// Opens `n` connections, echoes one byte on each (so each is fully set up), and returns the RSS
/// they add while idle. Closes them before returning.
async fn idle_rss(addr: SocketAddr, n: usize) -> Result<i64> {
    let before = rss()?;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connect {i} to {addr}"))?;
        s.write_all(b"x").await.with_context(|| format!("write {i} to {addr}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.with_context(|| format!("read {i} from {addr}"))?;
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let the last relays go idle
    let after = rss()?;
    drop(conns);
    Ok(after - before)
}
