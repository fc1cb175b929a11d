//! `--only held`: many connections held through one client at once, and what happens past the
//! server's `max_streams_per_client`.
//!
//! Every part runs in a process of its own, since a process may have at most 20,000 open files
//! here (the hard limit, which only `CAP_SYS_RESOURCE` could raise): the real `wmproxy-server`
//! and `wmproxy-client` binaries (next to this one: build them in the same profile), echo
//! backends and holders, which are this binary run with `--role` (at most [`PER_CHILD`]
//! connections each). Figures, each beside the direct run:
//! - every held connection passes a one-byte echo (and how many did not);
//! - RSS per held connection: the server's and the client's growth, against the echo
//!   backends' growth for the same connections held directly;
//! - one connection past the limit: how soon it is closed (it must be at once, never left
//!   waiting for stream credit).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};

/// Connections one echo backend or holder process takes.
pub const PER_CHILD: usize = 9_000;

/// Connects in flight at once in a holder.
const CONNECT_CONCURRENCY: usize = 64;

/// How long a phase (starting, holding, refusing) may take before the bench gives up on it.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);

/// What to hold.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Connections held at once through the tunnel.
    pub held: usize,
    /// The server's `max_streams_per_client`. At `held`, one connection more is tried.
    pub limit: u32,
}

/// A child process that prints one line when ready and runs until its stdin closes.
struct Part {
    child: Child,
    /// Closed (dropped) to end a role child.
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Part {
    fn spawn(mut command: Command) -> Result<Self> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("spawning {command:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        Ok(Self { stdin: child.stdin.take(), child, lines: BufReader::new(stdout).lines() })
    }

    /// The first line that starts with `prefix`, without it.
    async fn line(&mut self, prefix: &str) -> Result<String> {
        let found = tokio::time::timeout(PHASE_DEADLINE, async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            bail!("the child ended before printing {prefix:?}")
        });
        found.await.with_context(|| format!("waiting for {prefix:?}"))?
    }

    /// Resident set size, bytes.
    fn rss(&self) -> Result<u64> {
        let pid = self.child.id().context("child gone")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).context("VmRSS")?;
        Ok(kib.trim().trim_end_matches("kB").trim().parse::<u64>()? * 1024)
    }

    async fn end(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// This binary, as a role child.
fn role(args: &[&str]) -> Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--role").args(args);
    Ok(command)
}

/// Runs the figures.
pub async fn run(settings: Settings) -> Result<()> {
    let Settings { held, limit } = settings;
    let children = held.div_ceil(PER_CHILD).max(1);
    let shares: Vec<usize> = (0..children).map(|i| held / children + usize::from(i < held % children)).collect();
    println!("== {held} connections held at once through one client (max_streams_per_client = {limit})");

    let mut echoes = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..children {
        let mut echo = Part::spawn(role(&["echo"])?)?;
        backends.push(echo.line("listening ").await?.parse::<SocketAddr>()?);
        echoes.push(echo);
    }
    let echo_rss = |echoes: &[Part]| echoes.iter().map(Part::rss).sum::<Result<u64>>();

    // Direct: the same holders straight to the backends.
    let before = echo_rss(&echoes)?;
    let (holders, direct) = hold(&backends, &shares).await?;
    let direct_per = (echo_rss(&echoes)?.saturating_sub(before)) as f64 / direct.held.max(1) as f64 / 1024.0;
    for h in holders {
        h.end().await;
    }

    let dir = tempfile_dir()?;
    let (server, client, publics) = tunnel(&dir, &backends, limit).await?;
    let parts_rss = || Ok::<_, anyhow::Error>(server.rss()? + client.rss()?);
    let before = parts_rss()?;
    let (holders, tunnel) = hold(&publics, &shares).await?;
    let tunnel_per = (parts_rss()?.saturating_sub(before)) as f64 / tunnel.held.max(1) as f64 / 1024.0;
    println!(
        "held: direct {} of {held} ({:.1} s) | tunnel {} of {held} ({:.1} s), {} failed",
        direct.held, direct.secs, tunnel.held, tunnel.secs, tunnel.failed
    );
    println!(
        "RSS per held connection: direct (echo backend) {direct_per:.2} KiB | tunnel (server + client) {tunnel_per:.2} KiB"
    );

    if tunnel.held == limit as usize {
        let refused = past_the_limit(publics[0]).await;
        let started = Instant::now();
        let direct_echo = echo_one(backends[0], b'!').await.map(|_| started.elapsed().as_secs_f64() * 1e3);
        match refused {
            Ok(t) => println!(
                "one past the limit: closed after {:.2} ms (a direct connect + echo takes {:.2} ms)",
                t.as_secs_f64() * 1e3,
                direct_echo.unwrap_or(f64::NAN)
            ),
            Err(e) => println!("one past the limit: NOT refused ({e})"),
        }
    } else {
        println!("one past the limit: not tried (the limit {limit} is not what is held)");
    }

    for h in holders {
        h.end().await;
    }
    for part in [server, client].into_iter().chain(echoes) {
        part.end().await;
    }
    // Kept on failure (above): the parts' logs are there.
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// How many holders held, and how long it took.
struct Held {
    held: usize,
    failed: usize,
    secs: f64,
}

/// Holder children, one per share, each holding its share of connections to its address.
async fn hold(addrs: &[SocketAddr], shares: &[usize]) -> Result<(Vec<Part>, Held)> {
    let started = Instant::now();
    let mut holders = Vec::new();
    for (addr, share) in addrs.iter().zip(shares) {
        holders.push(Part::spawn(role(&["hold", &addr.to_string(), &share.to_string()])?)?);
    }
    let (mut held, mut failed) = (0, 0);
    for h in &mut holders {
        let line = h.line("held ").await?;
        let (ok, bad) = line.split_once(' ').context("held line")?;
        held += ok.parse::<usize>()?;
        failed += bad.parse::<usize>()?;
    }
    Ok((holders, Held { held, failed, secs: started.elapsed().as_secs_f64() }))
}

/// Time until a connection that sent a byte is closed (EOF or reset), within the phase
/// deadline.
async fn past_the_limit(addr: SocketAddr) -> Result<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.write_all(b"?").await;
    let mut b = [0u8; 1];
    match tokio::time::timeout(PHASE_DEADLINE, s.read(&mut b)).await {
        Ok(Ok(0) | Err(_)) => Ok(started.elapsed()),
        Ok(Ok(_)) => bail!("it was served"),
        Err(_) => bail!("still open after {} s", PHASE_DEADLINE.as_secs()),
    }
}

/// Where the parts' configs, state and logs go (removed after a run that succeeded).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("wmproxy-bench-held-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The real server and client binaries, one service per backend; returns them and the public
/// addresses, each answering an echo.
async fn tunnel(dir: &std::path::Path, backends: &[SocketAddr], limit: u32) -> Result<(Part, Part, Vec<SocketAddr>)> {
    let bin = std::env::current_exe()?.parent().context("bin dir")?.to_path_buf();
    let token = "bench-token-0123456789abcdef";
    let server_toml = format!(
        "bind = \"127.0.0.1:0\"\nstate_dir = {state:?}\npublic_bind = \"127.0.0.1\"\ntoken = \"{token}\"\n\
         allow_ports = [\"1024-65535\"]\n[limits]\nmax_streams_per_client = {limit}\n\
         max_connections_per_user = 1000000\nmax_silent_connections = 100000\ndrain_grace_secs = 1\n",
        state = dir.join("state").display().to_string(),
    );
    std::fs::write(dir.join("server.toml"), server_toml)?;
    let mut server_cmd = Command::new(bin.join("wmproxy-server"));
    server_cmd.arg("--config").arg(dir.join("server.toml")).env("RUST_LOG", "warn");
    server_cmd.stderr(std::fs::File::create(dir.join("server.log"))?);
    let mut server = Part::spawn(server_cmd)?;
    let addr = server.line("wmproxy-server listening on udp ").await?;
    let fingerprint = server.line("certificate fingerprint: ").await?;

    let mut client_toml = format!(
        "server_addr = \"{addr}\"\nserver_fingerprint = \"{fingerprint}\"\nname = \"bench\"\ntoken = \"{token}\"\n"
    );
    let mut publics = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        // Below the ephemeral range, which the holders' 19,900 connections use.
        let port = wmproxy_tests::backend::fixed_port().await?;
        publics.push(SocketAddr::from(([127, 0, 0, 1], port)));
        client_toml.push_str(&format!(
            "[[services]]\nname = \"echo{i}\"\nlocal_addr = \"{backend}\"\nremote_port = {port}\naccess_log = false\n"
        ));
    }
    std::fs::write(dir.join("client.toml"), client_toml)?;
    let mut client_cmd = Command::new(bin.join("wmproxy-client"));
    client_cmd.arg("--config").arg(dir.join("client.toml")).env("RUST_LOG", "warn");
    client_cmd.stderr(std::fs::File::create(dir.join("client.log"))?);
    let client = Part::spawn(client_cmd)?;
    for public in &publics {
        wait_for_echo(*public).await.with_context(|| format!("the tunnel's port {public}"))?;
    }
    Ok((server, client, publics))
}

/// Polls `addr` until a connection to it echoes a byte, within the phase deadline.
async fn wait_for_echo(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + PHASE_DEADLINE;
    loop {
        if echo_one(addr, b'.').await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no echo within {} s", PHASE_DEADLINE.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echo_one(addr: SocketAddr, byte: u8) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&[byte]).await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b)).await??;
    anyhow::ensure!(b[0] == byte, "echoed another byte");
    Ok(s)
}

/// The `--role` children: `echo` (a backend) and `hold ADDR N`. Each prints one line when
/// ready and runs until its stdin closes.
pub async fn child(args: &[String]) -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let mut kept = Vec::new();
    match args {
        [role] if role == "echo" => println!("listening {}", crate::backends::echo().await?),
        [role, addr, n] if role == "hold" => {
            let (addr, n) = (addr.parse::<SocketAddr>()?, n.parse::<usize>()?);
            let opened: Vec<Result<TcpStream>> = futures_util::stream::iter(0..n)
                .map(|i| echo_one(addr, i as u8))
                .buffer_unordered(CONNECT_CONCURRENCY)
                .collect()
                .await;
            let failed = opened.iter().filter(|o| o.is_err()).count();
            kept = opened.into_iter().flatten().collect();
            println!("held {} {failed}", kept.len());
        }
        _ => bail!("unknown role {args:?}"),
    }
    // Until the parent closes our stdin (or goes away).
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    drop(kept);
    Ok(())
}
