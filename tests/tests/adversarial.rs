//! Hostile peers: garbage and oversized frames on the control stream and on data streams close
//! that connection or stream only; the server does not panic or grow, and a good client works.

use anyhow::Result;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{DEADLINE, TestServer, echo_client, init_tracing, raw};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_wire::{ControlReply, ControlRequest, HelloReply, OpenResult, OpenStream};

/// Sends `bytes` as the first thing on a fresh control stream from `endpoint`; returns the
/// server's reply (if any) and how it closed the connection.
async fn hostile_hello(endpoint: &quinn::Endpoint, server: &TestServer, bytes: &[u8]) -> Result<String> {
    let conn = raw::connect_from(endpoint, server).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    let _ = send.finish();
    let reply = tokio::time::timeout(DEADLINE, read_frame::<HelloReply, _>(&mut recv)).await?;
    let closed = tokio::time::timeout(DEADLINE, conn.closed()).await?;
    Ok(format!("{reply:?} / {closed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_oversized_hello_closes_only_that_connection() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_good, public) = echo_client(&server, "good").await?;

    let endpoint = raw::endpoint()?;
    // A frame whose body is not a Hello (the right version, then a name that claims 2^32
    // bytes): the server answers "invalid hello" and closes.
    let version = u8::try_from(wmproxy_wire::PROTOCOL_VERSION)?;
    let garbage = [0, 0, 0, 7, version, 252, 0xff, 0xff, 0xff, 0xff, 0];
    let outcome = hostile_hello(&endpoint, &server, &garbage).await?;
    assert!(outcome.contains("Ok(Reject(Invalid("), "{outcome}");

    // Random bytes in a frame: whatever they decode to, the answer is a clear rejection.
    let mut random = 64u32.to_be_bytes().to_vec();
    random.extend(pattern(64, 1));
    let outcome = hostile_hello(&endpoint, &server, &random).await?;
    assert!(outcome.contains("Ok(Reject("), "{outcome}");

    // A length prefix of 4 GiB: closed without reading (or allocating) a body.
    let outcome = hostile_hello(&endpoint, &server, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await?;
    assert!(outcome.contains("exceeds the limit"), "{outcome}");

    // Pure noise without a valid prefix at all.
    let outcome = hostile_hello(&endpoint, &server, &pattern(10_000, 2)).await?;
    assert!(outcome.contains("closed"), "{outcome}");

    backend::assert_echo(public, 8192, 3).await?;
    assert_eq!(server.handle.clients(), ["good"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_authentication_closes_the_tunnel() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_good, public) = echo_client(&server, "good").await?;

    let (_endpoint, conn, mut send, _recv) = raw::authenticated(&server, "mallory", wmproxy_tests::TOKEN).await?;
    send.write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee]).await?;
    let reason = tokio::time::timeout(DEADLINE, conn.closed()).await?;
    assert!(reason.to_string().contains("malformed"), "{reason}");

    backend::assert_echo(public, 8192, 3).await?;
    assert_eq!(server.handle.clients(), ["good"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_data_stream_resets_only_that_stream() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let (_good, public) = echo_client(&server, "good").await?;

    let (_endpoint, conn, mut control, mut control_recv) =
        raw::authenticated(&server, "mallory", wmproxy_tests::TOKEN).await?;
    write_frame(&mut control, &ControlRequest::Register { services: vec![] }).await?;
    let ControlReply::Registered { .. } = read_frame::<ControlReply, _>(&mut control_recv).await? else {
        anyhow::bail!("reply")
    };

    for hostile in [vec![0xff, 0xff, 0xff, 0xff], vec![0, 0, 0, 2, 0x63, 0x63], pattern(5000, 4)] {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&hostile).await?;
        let answer = tokio::time::timeout(DEADLINE, read_frame::<OpenResult, _>(&mut recv)).await?;
        assert!(answer.is_err(), "stream should be reset, got {answer:?}");
    }
    // The tunnel itself is still up and answers a well-formed request.
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = OpenStream::Connect { target: "127.0.0.1:9".parse()?, peer_addr: "127.0.0.1:1".parse()? };
    write_frame(&mut send, &header).await?;
    assert_eq!(read_frame::<OpenResult, _>(&mut recv).await?, OpenResult::NotAllowed);
    assert!(conn.close_reason().is_none());

    backend::assert_echo(public, 8192, 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_finishes_its_header_is_closed_after_the_timeout() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|f| f.limits.stream_open_timeout_secs = 1).await?;
    let (_endpoint, conn, mut control, mut control_recv) =
        raw::authenticated(&server, "slowloris", wmproxy_tests::TOKEN).await?;
    write_frame(&mut control, &ControlRequest::Register { services: vec![] }).await?;
    let ControlReply::Registered { .. } = read_frame::<ControlReply, _>(&mut control_recv).await? else {
        anyhow::bail!("reply")
    };

    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0, 0]).await?; // half a length prefix, then nothing
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(DEADLINE, read_frame::<OpenResult, _>(&mut recv)).await?;
    assert!(answer.is_err(), "stream should be reset, got {answer:?}");
    let waited = started.elapsed();
    assert!(waited >= std::time::Duration::from_millis(900), "closed before the timeout: {waited:?}");
    assert!(conn.close_reason().is_none(), "only the stream is closed, not the tunnel");
    Ok(())
}
