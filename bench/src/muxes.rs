//! `--only muxes`: the two stream multiplexers the TCP transport could ride, side by side:
//! HTTP/2 (the `h2` crate, which the transport uses) and yamux (the `yamux` crate, libp2p's).
//! Each carries streams over one loopback TCP connection without TLS (either would pay the same
//! TLS), beside direct TCP connections in the same process:
//! - memory per idle stream (both ends), opened and sent one byte, first thing in a fresh
//!   process so that nothing freed earlier is reused;
//! - bulk upload on one stream and on eight, each run paired with a direct one.
//!
//! Each multiplexer runs in a child process of its own (`--mux-child`). h2 gets the tunnel's
//! windows (`TcpSettings`' defaults: 4 MiB per stream, 16 MiB per connection, 64 KiB frames);
//! yamux its defaults (256 KiB per stream, auto-tuned, within 1 GiB per connection, at most 512
//! streams, which its config asserts against the connection window).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// Streams held for the memory figure: within yamux's default limit of 512.
const IDLE_STREAMS: usize = 500;
/// What one write hands the multiplexer.
const CHUNK: usize = 64 * 1024;
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 64 * 1024;
/// A bulk run that makes no progress for this long is an error, not a figure.
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs each multiplexer's child process in turn; their figures go straight to stdout.
pub async fn run(bulk_mib: usize, repeat: usize) -> Result<()> {
    println!("== stream multiplexers over one loopback TCP connection (no TLS), {bulk_mib} MiB per bulk run");
    let exe = std::env::current_exe()?;
    for name in ["h2", "yamux"] {
        let status = tokio::process::Command::new(&exe)
            .args(["--mux-child", name, "--bulk-mib", &bulk_mib.to_string(), "--repeat", &repeat.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("the {name} child failed: {status}");
        }
    }
    Ok(())
}

/// One multiplexer's figures (`--mux-child NAME`).
pub async fn child(name: &str, bulk_mib: usize, repeat: usize) -> Result<()> {
    let (tx, received) = watch::channel(0u64);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let before = crate::rss()?;
    let opener = match name {
        "h2" => h2_pair(listener, addr, tx).await?,
        "yamux" => yamux_pair(listener, addr, tx).await?,
        other => bail!("no multiplexer {other:?} (h2, yamux)"),
    };
    let mut held = Vec::with_capacity(IDLE_STREAMS);
    for _ in 0..IDLE_STREAMS {
        let mut writer = opener.open().await?;
        writer.send(Bytes::from_static(b"x")).await?;
        held.push(writer);
    }
    let mut seen = received.clone();
    seen.wait_for(|n| *n >= IDLE_STREAMS as u64).await?;
    let per_stream = (crate::rss()? - before) as f64 / IDLE_STREAMS as f64 / 1024.0;
    println!("{name}: {per_stream:.2} KiB per idle stream (both ends, {IDLE_STREAMS} streams)");
    drop(held);

    let sink = crate::backends::sink().await?;
    let bytes = bulk_mib * 1024 * 1024;
    for streams in [1, 8] {
        let (mut directs, mut muxed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeat.max(1) {
            let direct = crate::bulk(sink, bytes, streams).await?;
            let through = bulk(&opener, &received, bytes, streams).await?;
            directs.push(direct);
            muxed.push(through);
            ratios.push(through / direct);
        }
        println!(
            "{name}, {streams} stream(s): direct {:>6.2} Gbit/s | {name} {:>5.2} Gbit/s | ratio {:>5.1} % (median of {} pairs)",
            crate::median(&mut directs),
            crate::median(&mut muxed),
            100.0 * crate::median(&mut ratios),
            repeat.max(1)
        );
    }
    Ok(())
}

/// Uploads `bytes` over `streams` new streams; returns Gbit/s once the far end has read it all.
async fn bulk(opener: &Opener, received: &watch::Receiver<u64>, bytes: usize, streams: usize) -> Result<f64> {
    let per = bytes / streams;
    let target = *received.borrow() + (per * streams) as u64;
    let chunk = Bytes::from(vec![0u8; CHUNK]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut writer = opener.open().await?;
        let chunk = chunk.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = per;
            while left > 0 {
                let n = left.min(CHUNK);
                writer.send(chunk.slice(..n)).await?;
                left -= n;
            }
            writer.finish().await?;
            anyhow::Ok(writer)
        }));
    }
    // The writers are held until the far end has read everything: an h2 stream whose every
    // handle is dropped before the response is reset, and a reset discards what is unread.
    let mut finished = Vec::with_capacity(streams);
    for task in tasks {
        let stalled =
            || format!("a {streams}-stream upload stalled; the far end has read {} of {target}", *received.borrow());
        finished.push(tokio::time::timeout(STALL, task).await.with_context(stalled)???);
    }
    tokio::time::timeout(STALL, received.clone().wait_for(|n| *n >= target))
        .await
        .with_context(|| format!("the far end stalled at {} of {target} bytes", *received.borrow()))??;
    let elapsed = started.elapsed();
    drop(finished);
    Ok((per * streams) as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// Opens streams on one side of a pair.
enum Opener {
    H2(h2::client::SendRequest<Bytes>),
    Yamux(mpsc::Sender<oneshot::Sender<yamux::Result<yamux::Stream>>>),
}

/// One opened stream's sending half.
enum Writer {
    H2 {
        send: h2::SendStream<Bytes>,
        /// Held with the stream (see [`bulk`]).
        _response: h2::client::ResponseFuture,
    },
    Yamux(Compat<yamux::Stream>),
}

impl Opener {
    async fn open(&self) -> Result<Writer> {
        match self {
            Self::H2(requests) => {
                let mut requests = requests.clone().ready().await?;
                let request = http::Request::post("http://mux/").body(())?;
                let (_response, send) = requests.send_request(request, false)?;
                Ok(Writer::H2 { send, _response })
            }
            Self::Yamux(opens) => {
                let (tx, rx) = oneshot::channel();
                opens.send(tx).await.context("the yamux driver ended")?;
                Ok(Writer::Yamux(FuturesAsyncReadCompatExt::compat(rx.await??)))
            }
        }
    }
}

impl Writer {
    async fn send(&mut self, mut data: Bytes) -> Result<()> {
        match self {
            Self::H2 { send, .. } => {
                while !data.is_empty() {
                    send.reserve_capacity(data.len());
                    let granted = poll_fn(|cx| send.poll_capacity(cx)).await.context("h2 stream closed")??;
                    send.send_data(data.split_to(granted.min(data.len())), false)?;
                }
            }
            Self::Yamux(stream) => stream.write_all(&data).await?,
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        match self {
            Self::H2 { send, .. } => send.send_data(Bytes::new(), true)?,
            Self::Yamux(stream) => stream.shutdown().await?,
        }
        Ok(())
    }
}

/// An h2 pair: this process is both the HTTP/2 client (the opener, as the tunnel's server is)
/// and the server (the acceptor, which reads every stream and adds its bytes to `received`).
async fn h2_pair(listener: TcpListener, addr: SocketAddr, received: watch::Sender<u64>) -> Result<Opener> {
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let _ = tcp.set_nodelay(true);
        let Ok(mut conn) = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_concurrent_streams(u32::MAX)
            .handshake::<_, Bytes>(tcp)
            .await
        else {
            return;
        };
        while let Some(Ok((request, respond))) = conn.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut respond = respond;
                // The answer's first byte, as yamux's acceptor sends; held open while it reads.
                let Ok(mut answer) = respond.send_response(http::Response::new(()), false) else { return };
                let _ = answer.send_data(Bytes::from_static(b"x"), false);
                let mut body = request.into_body();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    received.send_modify(|n| *n += chunk.len() as u64);
                }
            });
        }
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (requests, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake(tcp)
        .await?;
    tokio::spawn(connection);
    Ok(Opener::H2(requests))
}

/// A yamux pair: a driver task owns the opening side's connection and opens a stream for each
/// request; the accepting side reads every stream and adds its bytes to `received`.
async fn yamux_pair(listener: TcpListener, addr: SocketAddr, received: watch::Sender<u64>) -> Result<Opener> {
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let _ = tcp.set_nodelay(true);
        let mut conn =
            yamux::Connection::new(TokioAsyncReadCompatExt::compat(tcp), yamux::Config::default(), yamux::Mode::Server);
        while let Some(Ok(stream)) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut stream = FuturesAsyncReadCompatExt::compat(stream);
                // yamux acknowledges a stream with the acceptor's first frame, and an opener
                // with 256 streams unacknowledged waits: a byte back, as a backend would answer.
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; CHUNK];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    received.send_modify(|total| *total += n as u64);
                }
            });
        }
    });
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut conn =
        yamux::Connection::new(TokioAsyncReadCompatExt::compat(tcp), yamux::Config::default(), yamux::Mode::Client);
    let (opens, mut requests) = mpsc::channel::<oneshot::Sender<yamux::Result<yamux::Stream>>>(16);
    tokio::spawn(async move {
        let mut waiting = None;
        poll_fn(|cx| {
            loop {
                if waiting.is_none() {
                    match requests.poll_recv(cx) {
                        Poll::Ready(Some(reply)) => waiting = Some(reply),
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                if let Some(reply) = waiting.take() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(stream) => {
                            let _ = reply.send(stream);
                            continue;
                        }
                        Poll::Pending => waiting = Some(reply),
                    }
                }
                // Drives the connection; the accepting side opens nothing, so an inbound
                // stream is dropped.
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
    });
    Ok(Opener::Yamux(opens))
}
