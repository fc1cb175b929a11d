//! UDP figures: paced echo load at stepped offered rates, and small-packet round-trip latency,
//! direct vs through the tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use wmproxy_tunnel::transport;

/// What one paced run saw.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Packets sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Echoed payload, Mbit/s, over the sending time.
    pub delivered_mbps: f64,
}

impl Load {
    /// Lost packets (either way), percent of those sent.
    pub fn loss_percent(&self) -> f64 {
        100.0 * (self.sent.saturating_sub(self.received)) as f64 / self.sent.max(1) as f64
    }
}

/// Sends `payload`-byte packets to the echo at `addr` at `mbps` for `duration`, paced every
/// millisecond, and counts the echoes (waiting up to 500 ms after the last send for late ones).
pub async fn paced(addr: SocketAddr, mbps: f64, payload: usize, duration: Duration) -> Result<Load> {
    let socket = Arc::new(UdpSocket::from_std(transport::bind_udp("127.0.0.1:0".parse()?)?)?);
    socket.connect(addr).await?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let counter = {
        let (socket, received, stop) = (socket.clone(), received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = socket.recv(&mut buf) => if r.is_ok() { received.fetch_add(1, Ordering::Relaxed); },
                }
            }
        })
    };

    let per_second = mbps * 1e6 / (payload as f64 * 8.0);
    let total = (per_second * duration.as_secs_f64()) as u64;
    let packet = vec![0x5au8; payload];
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * per_second) as u64).min(total);
        while sent < due {
            socket.send(&packet).await?;
            sent += 1;
        }
    }
    let sending = started.elapsed();
    // Late echoes: stop once nothing has arrived for 100 ms, or after 500 ms.
    let settle = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    while settle.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    stop.cancel();
    counter.await?;
    let received = received.load(Ordering::Relaxed);
    let delivered_mbps = (received * payload as u64) as f64 * 8.0 / sending.as_secs_f64() / 1e6;
    Ok(Load { sent, received, delivered_mbps })
}

/// Sequential request → reply of `payload`-byte packets; returns (p50, p99, lost). A request
/// without a reply in 1 s counts as lost.
pub async fn latency(addr: SocketAddr, samples: usize, payload: usize) -> Result<(Duration, Duration, usize)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(addr).await?;
    let packet = vec![0x42u8; payload];
    let mut buf = vec![0u8; 65_536];
    let mut times = Vec::with_capacity(samples);
    let mut lost = 0;
    for _ in 0..samples {
        let started = Instant::now();
        socket.send(&packet).await?;
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
            Ok(r) => {
                r?;
                times.push(started.elapsed());
            }
            Err(_) => lost += 1,
        }
    }
    let (p50, p99) = crate::p50_p99(&mut times);
    Ok((p50, p99, lost))
}
