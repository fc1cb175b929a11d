//! Both ends of the TCP transport over a loopback TCP connection (no TLS: the framing above it
//! is the same): streams either way with half-close, the offers, datagrams, resets and the
//! close code.

use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, ReadError, VarInt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::{TcpConn, TcpSettings, offerer, opener};

const SETTINGS: TcpSettings = TcpSettings {
    stream_window: 256 * 1024,
    connection_window: 1024 * 1024,
    keep_alive: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(30),
};

async fn pair(tracker: &TaskTracker) -> (TcpConn, TcpConn) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (dialed, (accepted, peer)) = (dialed.expect("connect"), accepted.expect("accept"));
    let (server, client) = tokio::join!(
        opener(accepted, (peer, [1; 32]), (SETTINGS, 64 * 1024), tracker),
        offerer(dialed, (addr, [1; 32]), SETTINGS, tracker),
    );
    (server.expect("opener"), client.expect("offerer"))
}

#[tokio::test]
async fn streams_go_both_ways_with_half_close_and_the_window_moves_big_transfers() {
    let tracker = TaskTracker::new();
    let (server, client) = pair(&tracker).await;
    client.allow_streams(1);

    // The opener's stream: 3 MiB (more than both windows) one way, a reply the other.
    let (mut send, mut recv) = server.open_bi().await.expect("open");
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let sender = async {
        send.write_all(&big).await.expect("write");
        send.finish().expect("finish");
        let mut reply = Vec::new();
        recv.read_to_end(&mut reply).await.expect("reply");
        reply
    };
    let receiver = async {
        let (mut send, mut recv) = client.accept_bi().await.expect("accept");
        let mut got = Vec::new();
        recv.read_to_end(&mut got).await.expect("read");
        send.write_all(b"done").await.expect("reply");
        send.finish().expect("finish");
        got
    };
    let (reply, got) = tokio::join!(sender, receiver);
    assert_eq!(reply, b"done");
    assert!(got == big, "the 3 MiB came through changed");

    // The offerer's stream rides an offer, given after authentication.
    server.open_up(&SETTINGS, 4);
    let (mut send, _recv) = client.open_bi().await.expect("open by offer");
    send.write_all(b"hi").await.expect("write");
    send.finish().expect("finish");
    let (_send, mut recv) = server.accept_bi().await.expect("accept offer");
    let mut got = Vec::new();
    recv.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"hi");
}

#[tokio::test]
async fn a_stream_past_the_permits_is_refused_and_a_reset_reads_as_one() {
    let tracker = TaskTracker::new();
    let (server, client) = pair(&tracker).await;
    // No permits yet: the opener's stream is refused.
    let (_send, mut recv) = server.open_bi().await.expect("open");
    let mut buf = [0u8; 8];
    assert!(matches!(recv.read(&mut buf).await, Err(ReadError::Reset(_))), "a stream past the limit is refused");

    client.allow_streams(1);
    let (mut send, _recv) = server.open_bi().await.expect("open");
    send.write_chunk(Bytes::from_static(b"partial")).await.expect("write");
    let (_peer_send, mut peer_recv) = client.accept_bi().await.expect("accept");
    let mut got = [0u8; 7];
    peer_recv.read_exact(&mut got).await.expect("the bytes before the reset");
    send.reset(VarInt::from_u32(1)).expect("reset");
    assert!(matches!(peer_recv.read(&mut buf).await, Err(ReadError::Reset(code)) if code == VarInt::from_u32(1)));
}

#[tokio::test]
async fn datagrams_cross_and_the_close_code_reaches_the_peer() {
    let tracker = TaskTracker::new();
    let (server, client) = pair(&tracker).await;
    client.send_datagram(Bytes::from_static(b"up")).expect("send");
    server.send_datagram(Bytes::from_static(b"down")).expect("send");
    assert_eq!(server.read_datagram().await.expect("read"), Bytes::from_static(b"up"));
    assert_eq!(client.read_datagram().await.expect("read"), Bytes::from_static(b"down"));

    server.close(7, b"bye now");
    assert!(matches!(server.close_reason(), Some(ConnectionError::LocallyClosed)));
    match tokio::time::timeout(Duration::from_secs(10), client.closed()).await.expect("closed in time") {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!((close.error_code, &close.reason[..]), (VarInt::from_u32(7), &b"bye now"[..]));
        }
        other => panic!("closed with {other:?}"),
    }
    assert!(client.open_bi().await.is_err(), "a closed connection opens nothing");
    assert!(!format!("{server:?}").contains("[1, 1, 1"), "the exported secret is not in Debug");
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await.expect("every task of both ends ends");
}

#[tokio::test]
async fn before_open_up_the_offerer_sends_at_most_the_pre_auth_window() {
    const PRE_AUTH: usize = 64 * 1024;
    let tracker = TaskTracker::new();
    let (server, client) = pair(&tracker).await;
    // The one offer out before authentication: the client's control stream. The server never
    // reads it here, so what the client manages to send is what the window let through.
    let (mut send, _recv) = client.open_bi().await.expect("open by offer");
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    let mut sent = 0;
    while sent <= 1024 * 1024 {
        // A write that cannot finish in a second is held by the window (a legit one takes
        // microseconds): the bound below holds either way.
        match tokio::time::timeout(Duration::from_secs(1), send.write_chunk(chunk.clone())).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    assert!(sent <= PRE_AUTH, "{sent} bytes sent before authentication");
    let (_server_send, mut server_recv) = server.accept_bi().await.expect("accept");
    // Opened up, the same stream takes more.
    server.open_up(&SETTINGS, 4);
    let mut read = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let more = async {
        send.write_chunk(Bytes::from(vec![7u8; 512 * 1024])).await.expect("write after open_up");
    };
    let drain = async {
        while read < sent + 512 * 1024 {
            read += server_recv.read(&mut buf).await.expect("read").expect("not the end");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(more, drain) })
        .await
        .expect("flows after open_up");
}
