//! The multiplexed-TCP reference for the head-of-line figures: two logical streams over one
//! TCP connection, as TCP tunnels (frp, rathole with yamux-style muxing) carry them. Frames are
//! `[stream: u8][length: u16, big-endian][payload]`; stream 0 is bulk (the server drops it),
//! stream 1 is request/response (the server echoes each frame). Frames interleave whole, as in
//! yamux: a small frame waits for at most the bulk frame being written, then for everything
//! already in the TCP connection ahead of it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Bulk frames' payload: yamux's default window update granularity is larger, but frames of
/// this size already let a small frame in between every 16 KiB.
const BULK_FRAME: usize = 16 * 1024;

const BULK: u8 = 0;
const EXCHANGE: u8 = 1;

/// The far end: drops stream 0, echoes stream 1. Serves connections until the runtime ends.
pub async fn server(bind: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut read, mut write) = stream.into_split();
                let mut payload = vec![0u8; usize::from(u16::MAX)];
                while let Ok((id, len)) = read_head(&mut read).await {
                    if read.read_exact(&mut payload[..len]).await.is_err() {
                        return;
                    }
                    if id == EXCHANGE && write_frame(&mut write, EXCHANGE, &payload[..len]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The near end: one TCP connection carrying both streams.
#[derive(Debug)]
pub struct Client {
    write: Arc<Mutex<OwnedWriteHalf>>,
    replies: mpsc::Receiver<Vec<u8>>,
}

impl Client {
    /// Connects to a [`server`] and starts reading its echoes.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, write) = stream.into_split();
        let (tx, replies) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut payload = vec![0u8; usize::from(u16::MAX)];
            while let Ok((_, len)) = read_head(&mut read).await {
                if read.read_exact(&mut payload[..len]).await.is_err()
                    || tx.send(payload[..len].to_vec()).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Self { write: Arc::new(Mutex::new(write)), replies })
    }

    /// Sends bulk frames on stream 0 until `stop`; returns the bytes sent.
    pub fn bulk(&self, stop: CancellationToken) -> tokio::task::JoinHandle<Result<u64>> {
        let write = Arc::clone(&self.write);
        tokio::spawn(async move {
            let (frame, mut sent) = (vec![0x5au8; BULK_FRAME], 0u64);
            while !stop.is_cancelled() {
                write_frame(&mut *write.lock().await, BULK, &frame).await?;
                sent += frame.len() as u64;
            }
            Ok(sent)
        })
    }

    /// One request on stream 1 and its echo.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<()> {
        write_frame(&mut *self.write.lock().await, EXCHANGE, request).await?;
        let reply = self.replies.recv().await.context("the mux connection closed")?;
        ensure!(reply == request, "the echo differs");
        Ok(())
    }
}

async fn read_head(read: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(u8, usize)> {
    let mut head = [0u8; 3];
    read.read_exact(&mut head).await?;
    Ok((head[0], usize::from(u16::from_be_bytes([head[1], head[2]]))))
}

async fn write_frame(write: &mut OwnedWriteHalf, id: u8, payload: &[u8]) -> Result<()> {
    let len = u16::try_from(payload.len()).context("a frame over 64 KiB")?;
    let mut frame = Vec::with_capacity(3 + payload.len());
    frame.push(id);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    write.write_all(&frame).await?;
    Ok(())
}
