//! UDP backends and users for tests, on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::UdpSocket;
use wmproxy_config::{Forward, Service, ServiceKind};

/// How long one UDP request waits for its reply before it is sent again.
pub const REPLY_WAIT: Duration = Duration::from_secs(2);

/// How many times a UDP request is sent before the round trip fails.
pub const TRIES: usize = 3;

/// A UDP echo server on loopback: sends every packet back to its sender. Its socket buffers
/// are large (4 MiB where the kernel allows), so that it is not where packets are lost. Runs
/// until the runtime ends.
pub async fn echo() -> Result<SocketAddr> {
    echo_at("127.0.0.1:0".parse()?).await
}

/// [`echo`] on `bind`.
pub async fn echo_at(bind: SocketAddr) -> Result<SocketAddr> {
    let socket = UdpSocket::from_std(wmproxy_tunnel::transport::bind_udp(bind)?)?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    Ok(addr)
}

/// A user socket on loopback.
pub async fn user() -> Result<UdpSocket> {
    Ok(UdpSocket::bind("127.0.0.1:0").await?)
}

/// Sends `payload` to `to` and returns the first reply equal to it, sending again after
/// [`REPLY_WAIT`] (at most [`TRIES`] times). Replies that differ (late duplicates of earlier
/// requests) are passed to `stray`, which may fail the round trip.
pub async fn round_trip(
    socket: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    mut stray: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..TRIES {
        socket.send_to(payload, to).await?;
        let waited = tokio::time::timeout(REPLY_WAIT, async {
            loop {
                let (n, from) = socket.recv_from(&mut buf).await?;
                if from != to {
                    bail!("reply from {from}, expected {to}");
                }
                if &buf[..n] == payload {
                    return Ok(());
                }
                stray(&buf[..n])?;
            }
        })
        .await;
        match waited {
            Ok(result) => return result,
            Err(_) => continue,
        }
    }
    bail!("no reply from {to} after {TRIES} tries of {} bytes", payload.len())
}

/// Sends `payload` to `to` and returns the reply, whatever it is (one try).
pub async fn request(socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    socket.send_to(payload, to).await?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(REPLY_WAIT, socket.recv_from(&mut buf)).await.context("no reply")??;
    buf.truncate(n);
    Ok(buf)
}

/// A UDP service entry for a client config.
pub fn service(name: &str, local: SocketAddr, remote_port: u16) -> Service {
    crate::service(ServiceKind::Udp, name, local, remote_port)
}

/// A UDP forward entry for a client config, on a free loopback port.
pub fn forward_to(target: SocketAddr) -> Forward {
    crate::forward(ServiceKind::Udp, target)
}

/// A UDP echo that answers `tag:payload`, until the returned token is cancelled.
pub async fn tagged_echo(tag: &str) -> Result<(SocketAddr, tokio_util::sync::CancellationToken)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (token, prefix) = (stop.clone(), format!("{tag}:"));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = tokio::select! {
                () = token.cancelled() => break,
                r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
            };
            let mut reply = prefix.clone().into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    Ok((addr, stop))
}

/// Sends `count` numbered packets of `len` bytes (at least 8) from `socket` to `to` (a UDP
/// echo), one every `every`, while reading the echoes; stops reading one second after the
/// last send. Returns how many distinct packets came back.
pub async fn paced_echo(
    socket: &UdpSocket,
    to: SocketAddr,
    (count, len): (u64, usize),
    every: std::time::Duration,
) -> Result<u64> {
    let mut back = std::collections::HashSet::new();
    let mut ticks = tokio::time::interval(every);
    let mut buf = vec![0u8; 65_536];
    let mut packet = vec![0u8; len.max(8)];
    let mut sent = 0u64;
    let mut last_sent = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick(), if sent < count => {
                packet[..8].copy_from_slice(&sent.to_be_bytes());
                socket.send_to(&packet, to).await?;
                sent += 1;
                last_sent = tokio::time::Instant::now();
            }
            got = socket.recv_from(&mut buf) => {
                let (n, _) = got?;
                if let Some(seq) = buf.get(..8).filter(|_| n >= 8) {
                    back.insert(u64::from_be_bytes(seq.try_into()?));
                }
            }
            () = tokio::time::sleep_until(last_sent + std::time::Duration::from_secs(1)), if sent == count => break,
        }
    }
    Ok(back.len() as u64)
}
