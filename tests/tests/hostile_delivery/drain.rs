//! Drain waits for delivery: a stop in the middle of a transfer loses no byte that was sent
//! before it. The server's drain, and the client's, wait until the streams in flight have
//! finished and their last bytes are acknowledged, within the grace period, before the tunnel
//! closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wmproxy_tests::backend::{checksum, pattern, source};
use wmproxy_tests::{DEADLINE, TestClient, TestServer, eventually, init_tracing, tcp_service};

const LEN: usize = 64 * 1024 * 1024;

/// A backend that half-closes at once (it never answers) and reports what it read from each
/// connection: the byte count and the checksum, and whether the end was clean.
async fn upload_sink() -> Result<(SocketAddr, Arc<AtomicU64>, mpsc::Receiver<(u64, u64, bool)>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(4);
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                let _ = tcp.shutdown().await;
                let (mut count, mut hash, mut buf) = (0u64, checksum(&[]), vec![0u8; 64 * 1024]);
                let clean = loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => break true,
                        Ok(n) => {
                            hash =
                                buf[..n].iter().fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
                            count += n as u64;
                            seen.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => break false,
                    }
                };
                let _ = tx.send((count, hash, clean)).await;
            });
        }
    });
    Ok((addr, progress, rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_during_an_upload_delivers_all_of_it_first() -> Result<()> {
    init_tracing();
    let mut server = TestServer::start(|_| {}).await?;
    let (sink, progress, mut ends) = upload_sink().await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("up", sink, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("up").await?;

    let data = pattern(LEN, 5);
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut from_user, mut to_user) = user.split();
    let upload = async {
        to_user.write_all(&data).await?;
        to_user.shutdown().await?;
        // The user's side is done: it has handed over every byte.
        let mut rest = Vec::new();
        from_user.read_to_end(&mut rest).await?;
        anyhow::Ok(())
    };
    // The server stops once the upload is under way.
    let stop = async {
        eventually("the upload under way", || progress.load(Ordering::Relaxed) > 0).await?;
        server.stop().await
    };
    let (uploaded, stopped) = tokio::join!(upload, stop);
    uploaded?;
    stopped?;
    let (count, hash, clean) = tokio::time::timeout(DEADLINE, ends.recv()).await?.unwrap_or_default();
    ensure!(
        clean && count == LEN as u64 && hash == checksum(&data),
        "the backend got {count} of {LEN} bytes (clean end: {clean})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stopped_during_a_download_delivers_all_of_it_first() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let data = Arc::new(pattern(LEN, 6));
    let mut config = server.client_config("home");
    config.services.push(tcp_service("down", source(data.clone()).await?, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("down").await?;

    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut first = [0u8; 1];
    user.read_exact(&mut first).await?;
    // The client stops while the download is under way; the user reads on.
    let (stopped, read) = tokio::join!(client.stop(), async {
        let mut rest = Vec::new();
        let read = user.read_to_end(&mut rest).await;
        (read, rest)
    });
    stopped?;
    let (read, rest) = read;
    ensure!(read.is_ok(), "the download ended with {read:?} after {} bytes", rest.len() + 1);
    ensure!(
        first[0] == data[0] && rest[..] == data[1..],
        "the download came back altered: {} of {LEN} bytes",
        rest.len() + 1
    );
    Ok(())
}
