//! The real `wmproxy-server` binary under SIGTERM: it stops accepting at once, says how many
//! connections it drains and for how long, lets a transfer in flight finish, says when it is
//! drained, exits 0, and the client logs the server's reason and reconnects to the next server
//! on the same address. A second SIGTERM during a drain exits at once.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use wmproxy_client::{Client, ClientStatus};

const TOKEN: &str = "sigterm-test-token-123";
const DEADLINE: Duration = Duration::from_secs(20);
const REPLY_LEN: usize = 4 * 1024 * 1024;

/// What the binary logs on stderr, line by line.
type Stderr = tokio::sync::mpsc::UnboundedReceiver<String>;

/// Waits for a line of `stderr` that contains every one of `parts`, and returns it.
async fn line_with(stderr: &mut Stderr, parts: &[&str]) -> Result<String> {
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = stderr.recv().await {
            if parts.iter().all(|p| line.contains(p)) {
                return Some(line);
            }
        }
        None
    });
    found.await.ok().flatten().with_context(|| format!("no log line with {parts:?}"))
}

/// Starts the binary on `bind` with `drain_grace_secs = grace`; returns it (stdout kept
/// open), the address and fingerprint it printed, and its log lines.
async fn start_server(dir: &Path, bind: &str, grace: u64) -> Result<(Child, SocketAddr, String, Stderr)> {
    let config = dir.join("server.toml");
    let state = dir.join("state");
    std::fs::write(
        &config,
        format!(
            "bind = \"{bind}\"\nstate_dir = \"{}\"\ntoken = \"{TOKEN}\"\nallow_ports = [\"1024-65535\"]\n\
             public_bind = \"127.0.0.1\"\n[limits]\ndrain_grace_secs = {grace}\n",
            state.display()
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wmproxy-server"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .spawn()?;
    let (log, stderr) = tokio::sync::mpsc::unbounded_channel();
    let mut log_lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = log_lines.next_line().await {
            let _ = log.send(line);
        }
    });
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await??.context("server exited early")?;
        if let Some(a) = line.strip_prefix("wmproxy-server listening on udp ") {
            addr = Some(a.parse()?);
        } else if let Some(f) = line.strip_prefix("certificate fingerprint: ") {
            fingerprint = Some(f.to_owned());
        }
    }
    // Keep reading (and dropping) stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr.unwrap(), fingerprint.unwrap(), stderr))
}

/// A backend that, per connection, reads one byte, then waits for `release` and answers with
/// [`REPLY_LEN`] bytes of a known pattern. `accepted` is notified when it holds a connection.
async fn held_backend(release: Arc<Notify>, accepted: Arc<Notify>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (release, accepted) = (release.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                if tcp.read_exact(&mut byte).await.is_err() {
                    return;
                }
                accepted.notify_one();
                release.notified().await;
                let reply: Vec<u8> = (0..REPLY_LEN).map(|i| (i % 251) as u8).collect();
                let _ = tcp.write_all(&reply).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn wait_status(
    status: &mut watch::Receiver<ClientStatus>,
    pred: impl Fn(&ClientStatus) -> bool,
) -> Result<ClientStatus> {
    let got = tokio::time::timeout(DEADLINE, async { status.wait_for(|s| pred(s)).await.map(|s| s.clone()) }).await;
    match got {
        Ok(Ok(s)) => Ok(s),
        _ => bail!("client status never matched; last: {:?}", *status.borrow()),
    }
}

/// Sends SIGTERM to the binary.
fn kill_term(server: &Child) -> Result<()> {
    let pid = server.id().context("server pid")?;
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    ensure!(killed.success(), "kill -TERM failed");
    Ok(())
}

type Running = (
    watch::Receiver<ClientStatus>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), wmproxy_client::ClientError>>,
    SocketAddr,
);

/// A client of the server at `addr` publishing `backend` as "held"; its status, its stop, its
/// task and the public address of the service.
async fn held_client(addr: SocketAddr, fingerprint: &str, backend: SocketAddr) -> Result<Running> {
    let client_toml = format!(
        "server_addr = \"{addr}\"\nserver_fingerprint = \"{fingerprint}\"\nname = \"home\"\ntoken = \"{TOKEN}\"\n\
         [[services]]\nname = \"held\"\nlocal_addr = \"{backend}\"\n"
    );
    let client = Client::new(wmproxy_config::parse_client(&client_toml)?).await?;
    let mut status = client.status();
    let stop_client = CancellationToken::new();
    let client_task = tokio::spawn(client.run(stop_client.clone()));
    let connected = wait_status(&mut status, |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let public = SocketAddr::from(([127, 0, 0, 1], connected.port_of("held").context("published")?));
    Ok((status, stop_client, client_task, public))
}

/// A second SIGTERM while a connection holds the drain open stops the server at once, long
/// before its grace period (an hour here) is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_drain_exits_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, addr, fingerprint, mut stderr) = start_server(dir.path(), "127.0.0.1:0", 3600).await?;
    let (release, accepted) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let backend = held_backend(release, accepted.clone()).await?;
    let (_status, stop_client, _client, public) = held_client(addr, &fingerprint, backend).await?;
    let mut user = TcpStream::connect(public).await?;
    user.write_all(b"g").await?;
    tokio::time::timeout(DEADLINE, accepted.notified()).await?;

    kill_term(&server)?;
    line_with(&mut stderr, &["stopping", "connections=1", "grace_secs=3600"]).await?;
    kill_term(&server)?;
    let exit = tokio::time::timeout(DEADLINE, server.wait()).await??;
    ensure!(exit.code() == Some(130), "server exit: {exit:?}");
    line_with(&mut stderr, &["second stop signal"]).await?;
    stop_client.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_transfer_exits_0_and_the_client_reconnects_to_the_next_server() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, addr, fingerprint, mut stderr) = start_server(dir.path(), "127.0.0.1:0", 20).await?;

    let (release, accepted) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let backend = held_backend(release.clone(), accepted.clone()).await?;
    let (mut status, stop_client, client_task, public) = held_client(addr, &fingerprint, backend).await?;

    let mut user = TcpStream::connect(public).await?;
    user.write_all(b"g").await?;
    tokio::time::timeout(DEADLINE, accepted.notified()).await?;

    kill_term(&server)?;
    line_with(&mut stderr, &["stopping", "clients=1", "connections=1", "grace_secs=20"]).await?;
    // Readiness: the public port stops accepting once the server is draining.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(public).await.is_ok() {
        ensure!(tokio::time::Instant::now() < deadline, "the public port still accepts after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The transfer in flight completes, intact.
    release.notify_one();
    let mut reply = Vec::new();
    tokio::time::timeout(DEADLINE, user.read_to_end(&mut reply)).await??;
    ensure!(reply.len() == REPLY_LEN, "got {} of {REPLY_LEN} bytes", reply.len());
    ensure!(reply.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "corrupted reply");
    drop(user);
    line_with(&mut stderr, &["drained", "drained_in_ms="]).await?;
    let exit = tokio::time::timeout(DEADLINE, server.wait()).await??;
    ensure!(exit.code() == Some(0), "server exit: {exit:?}");

    let lost = wait_status(&mut status, |s| matches!(s, ClientStatus::Connecting { last_error: Some(_), .. })).await?;
    let ClientStatus::Connecting { last_error: Some(reason), .. } = &lost else { unreachable!() };
    ensure!(reason.contains("server shutting down"), "the client saw: {reason}");

    // A new server on the same address and state (same certificate): the client comes back.
    let (_next, next_addr, ..) = start_server(dir.path(), &addr.to_string(), 20).await?;
    ensure!(next_addr == addr);
    wait_status(&mut status, |s| matches!(s, ClientStatus::Connected { .. })).await?;
    stop_client.cancel();
    tokio::time::timeout(DEADLINE, client_task).await???;
    Ok(())
}
