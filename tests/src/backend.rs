//! TCP backends for tests, on `127.0.0.1:0`.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server: copies every byte back, and shuts down its write side after the reader's
/// EOF (so half-close is visible end to end). Runs until the runtime ends.
pub async fn echo() -> Result<SocketAddr> {
    echo_on(std::net::Ipv4Addr::LOCALHOST.into()).await
}

/// [`echo`] on `ip` (a test bed host's address), port 0.
pub async fn echo_on(ip: std::net::IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = stream.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// A server that reads until EOF, then replies with `reply_for(bytes_read)` and closes: the
/// reply can only arrive if the user's half-close went through and the reverse direction
/// stayed open.
pub async fn reply_after_eof() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                if stream.read_to_end(&mut seen).await.is_ok() {
                    let _ = stream.write_all(&reply_for(&seen)).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// What [`reply_after_eof`] answers to `request`: 1 MiB derived from it.
pub fn reply_for(request: &[u8]) -> Vec<u8> {
    let seed = request.iter().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(*b));
    (0..1024 * 1024).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

/// A backend that sends `data` to each connection, then closes it.
pub async fn source(data: std::sync::Arc<Vec<u8>>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let _ = tcp.write_all(&data).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Opens `n` connections to `addr` and echoes one byte on each (each within [`crate::DEADLINE`]);
/// returns them, still open.
pub async fn hold_open(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&[i as u8]).await?;
        let mut b = [0u8; 1];
        let read = tokio::time::timeout(crate::DEADLINE, s.read_exact(&mut b)).await;
        read.map_err(|_| anyhow::anyhow!("connection {i} of {n}: no echo"))?
            .map_err(|e| anyhow::anyhow!("connection {i} of {n}: {e}"))?;
        anyhow::ensure!(b[0] == i as u8, "connection {i} echoed another byte");
        open.push(s);
    }
    Ok(open)
}

/// Asserts that a new connection to `addr` is closed at once (over a limit), not left hanging.
pub async fn assert_refused(addr: SocketAddr) -> Result<()> {
    let mut extra = TcpStream::connect(addr).await?;
    let _ = extra.write_all(b"?").await;
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut b)).await;
    anyhow::ensure!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "over-limit connection not closed: {read:?}");
    Ok(())
}

/// An address on which nothing listens (bound then released), on a [`fixed_port`]: tests
/// also use it as a port to bind later (a group's or a service's public port).
pub async fn dead_port() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], fixed_port().await?)))
}

/// A port free now on 127.0.0.1 and below the kernel's ephemeral range, for a test that must
/// name a port before something binds it (a group's `remote_port`, an allowance). A port
/// bound and released in the ephemeral range may be taken meanwhile by any `bind(0)` or
/// outgoing connection of a test running beside it; below the range nothing is handed out.
pub async fn fixed_port() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let span = u32::from(low.saturating_sub(10_000)).max(1);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut x = seed ^ std::process::id().rotate_left(16);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = u16::try_from(10_000 + x % span).unwrap_or(10_000);
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port below {low}")
}

/// Polls until connecting to `port` on 127.0.0.1 is refused (a closed listener's port), within
/// [`crate::DEADLINE`].
pub async fn refused(port: u16) -> Result<()> {
    let deadline = tokio::time::Instant::now() + crate::DEADLINE;
    loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => anyhow::bail!("port {port} still accepts"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Connects, sends `msg`, half-closes and reads everything back.
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(msg).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await?;
    Ok(back)
}

/// Round-trips `len` bytes of [`pattern`] `seed` through `addr` and checks they come back intact.
pub async fn assert_echo(addr: SocketAddr, len: usize, seed: u64) -> Result<()> {
    let msg = pattern(len, seed);
    let back = round_trip(addr, &msg).await?;
    anyhow::ensure!(back == msg, "echo through {addr} came back altered ({} of {len} bytes)", back.len());
    Ok(())
}

/// Sends `len` bytes of [`pattern`] `seed` through `stream` (an echo at its far end) while
/// reading them back, half-closes, and checks that all came back intact (by [`checksum`], so
/// that 64 MiB are not compared byte by byte).
pub async fn bulk_echo(stream: TcpStream, len: usize, seed: u64) -> Result<()> {
    let data = pattern(len, seed);
    let expected = checksum(&data);
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back).await?;
    writer.await??;
    anyhow::ensure!(
        back.len() == len && checksum(&back) == expected,
        "{} of {len} bytes came back, changed",
        back.len()
    );
    Ok(())
}

/// A backend that writes `len` bytes of [`pattern`] (seed 3) to each connection, then holds it
/// open, reading and dropping whatever comes, until the other side closes.
pub async fn sends_then_holds(len: usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(&pattern(len, 3)).await;
                let mut sink = [0u8; 64];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

/// Deterministic test data: `len` bytes from a seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a 64 of `data`, as a checksum.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A server that reads until EOF, counting bytes into the returned counter (a progress signal
/// for tests), then answers with 16 bytes: the count and the [`checksum`] of what it read,
/// both big-endian `u64`.
pub async fn checksum_sink() -> Result<(SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = std::sync::Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut count, mut hash) = (0u64, checksum(&[]));
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            let chunk = &buf[..n];
                            hash = chunk.iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
                            count += n as u64;
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = count.to_be_bytes().to_vec();
                answer.extend_from_slice(&hash.to_be_bytes());
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((addr, received))
}
