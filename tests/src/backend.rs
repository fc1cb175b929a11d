//! TCP backends for tests, on `127.0.0.1:0`.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server: copies every byte back, and shuts down its write side after the reader's
/// EOF (so half-close is visible end to end). Runs until the runtime ends.
pub async fn echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
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

/// An address on which nothing listens (bound then released).
pub async fn dead_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
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
