//! Aborts look like aborts: a reset on one side of the tunnel reaches the other side as a
//! reset, exactly as it would on a direct connection, so a truncated transfer never passes for a
//! complete one. A clean close is still a clean end of data.

use std::io::ErrorKind;
use std::net::SocketAddr;

use anyhow::{Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wmproxy_tests::backend::pattern;
use wmproxy_tests::{DEADLINE, TestClient, TestServer, init_tracing, tcp_service};

/// Reads until the end of data or an error: the bytes read, and how it ended (`None`: a clean
/// end of data).
async fn read_to_end_or_error(stream: &mut TcpStream) -> Result<(usize, Option<ErrorKind>)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await? {
            Ok(0) => return Ok((total, None)),
            Ok(n) => total += n,
            Err(e) => return Ok((total, Some(e.kind()))),
        }
    }
}

/// Connects to `addr` and reads to the end or an error, as [`read_to_end_or_error`]. A reset
/// may come before `connect` returns; that is the same reset, after 0 bytes.
async fn download(addr: SocketAddr) -> Result<(usize, Option<ErrorKind>)> {
    match TcpStream::connect(addr).await {
        Ok(mut tcp) => read_to_end_or_error(&mut tcp).await,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok((0, Some(e.kind()))),
        Err(e) => Err(e.into()),
    }
}

/// A backend that writes `len` bytes to each connection and then aborts it (an RST).
async fn resetting_backend(len: usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(&pattern(len, 9)).await;
                let _ = tcp.set_zero_linger();
            });
        }
    });
    Ok(addr)
}

/// A backend that reads each connection to its end and reports how it ended; and, on the
/// second receiver, that a connection's first bytes arrived.
async fn reporting_backend() -> Result<(SocketAddr, mpsc::Receiver<Option<ErrorKind>>, mpsc::Receiver<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (ends, ended) = mpsc::channel(8);
    let (reads, reading) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (ends, reads) = (ends.clone(), reads.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                let end = match tcp.read(&mut first).await {
                    Ok(0) => None,
                    Ok(_) => {
                        let _ = reads.try_send(());
                        read_to_end_or_error(&mut tcp).await.ok().and_then(|(_, end)| end)
                    }
                    Err(e) => Some(e.kind()),
                };
                let _ = ends.send(end).await;
            });
        }
    });
    Ok((addr, ended, reading))
}

/// Sends some bytes and, once the backend has read some (so the connection is carried end to
/// end, not still being set up), aborts the connection (an RST).
async fn abort(mut user: TcpStream, reading: &mut mpsc::Receiver<()>) -> Result<()> {
    user.write_all(&pattern(64 * 1024, 3)).await?;
    tokio::time::timeout(DEADLINE, reading.recv()).await?;
    user.set_zero_linger()?;
    drop(user);
    Ok(())
}

/// How the backend's next connection ended, if it reports one in time.
async fn end(ends: &mut mpsc::Receiver<Option<ErrorKind>>) -> Option<Option<ErrorKind>> {
    tokio::time::timeout(DEADLINE, ends.recv()).await.ok().flatten()
}

/// A server and a client publishing `backend` as `svc`; the public address.
async fn published(backend: SocketAddr) -> Result<(TestServer, TestClient, SocketAddr)> {
    let server = TestServer::start(|_| {}).await?;
    let mut config = server.client_config("home");
    config.services.push(tcp_service("svc", backend, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("svc").await?;
    Ok((server, client, SocketAddr::from(([127, 0, 0, 1], port))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_resets_mid_transfer_resets_the_user_too() -> Result<()> {
    init_tracing();
    let backend = resetting_backend(256 * 1024).await?;
    let (_server, _client, public) = published(backend).await?;

    let (_, direct) = download(backend).await?;
    ensure!(direct == Some(ErrorKind::ConnectionReset), "directly, the user sees {direct:?}");
    let (read, tunnelled) = download(public).await?;
    ensure!(tunnelled == direct, "through the tunnel the user sees {tunnelled:?} after {read} bytes, not a reset");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_resets_resets_the_backend_too_and_a_clean_close_stays_clean() -> Result<()> {
    init_tracing();
    let (backend, mut ends, mut reading) = reporting_backend().await?;
    let (_server, _client, public) = published(backend).await?;
    abort(TcpStream::connect(backend).await?, &mut reading).await?;
    let direct = end(&mut ends).await;
    ensure!(direct == Some(Some(ErrorKind::ConnectionReset)), "directly, the backend sees {direct:?}");
    abort(TcpStream::connect(public).await?, &mut reading).await?;
    let tunnelled = end(&mut ends).await;
    ensure!(tunnelled == direct, "through the tunnel the backend sees {tunnelled:?}, not a reset");

    // A clean close is carried as one: the backend reads a clean end of data.
    let mut user = TcpStream::connect(public).await?;
    user.write_all(b"all of it").await?;
    user.shutdown().await?;
    let clean = end(&mut ends).await;
    ensure!(clean == Some(None), "a clean close reached the backend as {clean:?}");
    Ok(())
}

/// A connection cut because its service was withdrawn (here: the client's tunnel to a server
/// whose drain grace is over) ends as an abort for the user, never as a clean end of data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_the_drain_grace_is_an_abort_for_the_user() -> Result<()> {
    init_tracing();
    let backend = wmproxy_tests::backend::sends_then_holds(10_000).await?;
    let server = TestServer::start(|f| f.limits.drain_grace_secs = 1).await?;
    let mut config = server.client_config("held");
    config.services.push(tcp_service("held", backend, 0));
    let mut client = TestClient::start(config).await?;
    let port = client.port_of("held").await?;
    let mut user = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut first = vec![0u8; 10_000];
    user.read_exact(&mut first).await?;
    // The server stops with the connection open: once its grace period is over, the
    // connection is cut.
    let mut server = server;
    let stopping = tokio::spawn(async move { server.stop().await });
    let (more, how) = read_to_end_or_error(&mut user).await?;
    ensure!(more == 0 && how == Some(ErrorKind::ConnectionReset), "the cut ended as {how:?} after {more} more bytes");
    stopping.await??;
    client.stop().await?;
    Ok(())
}
