//! Lean backends for the benchmark: they must not be what is measured.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads until EOF, then answers with the byte count (u64, big-endian).
pub async fn sink() -> Result<SocketAddr> {
    sink_at(([127, 0, 0, 1], 0).into()).await
}

/// [`sink`] on `bind`.
pub async fn sink_at(bind: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_u64(total).await;
            });
        }
    });
    Ok(addr)
}

/// Echoes with a 64-byte buffer held in the task: idle connections cost the backend little.
pub async fn echo() -> Result<SocketAddr> {
    echo_at(([127, 0, 0, 1], 0).into()).await
}

/// [`echo`] on `bind`.
pub async fn echo_at(bind: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Writes `bytes` of filler to a [`sink`] connection, half-closes, and checks the sink's count.
pub async fn upload_to_sink(s: &mut tokio::net::TcpStream, bytes: usize) -> Result<()> {
    s.set_nodelay(true)?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        left -= n;
    }
    s.shutdown().await?;
    let got = s.read_u64().await?;
    anyhow::ensure!(got == bytes as u64, "sink counted {got} of {bytes} bytes");
    Ok(())
}
