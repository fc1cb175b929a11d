//! Local forwards: a client port whose connections leave from the server, under its egress
//! policy.

use std::time::Duration;

use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{TestClient, TestServer, forward_to, init_tracing, raw};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_wire::{ControlReply, ControlRequest, OpenResult, OpenStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_reaches_an_allowed_target_through_the_server() -> Result<()> {
    init_tracing();
    let target = backend::echo().await?;
    let server = TestServer::start(|f| f.egress.allow = vec!["127.0.0.1/32".parse().expect("cidr")]).await?;
    let mut config = server.client_config("home");
    config.forwards.push(forward_to(target));
    let mut client = TestClient::start(config).await?;
    client.port_of("none").await.ok(); // wait for the tunnel
    let listen = client.forward_addrs[0];

    let msg = pattern(256 * 1024, 8);
    assert_eq!(backend::round_trip(listen, &msg).await?, msg);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_egress_policy_refuses_loopback_targets() -> Result<()> {
    init_tracing();
    let target = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?;

    // Through a real client: the local connection is closed without data.
    let mut config = server.client_config("home");
    config.forwards.push(forward_to(target));
    let mut client = TestClient::start(config).await?;
    client.port_of("none").await.ok();
    let mut user = TcpStream::connect(client.forward_addrs[0]).await?;
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(5), user.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "expected a close, got {read:?}");

    // On the wire: the server's answer says why.
    let (_endpoint, conn, mut control, mut control_recv) =
        raw::authenticated(&server, "probe", wmproxy_tests::TOKEN).await?;
    write_frame(&mut control, &ControlRequest::Register { services: vec![] }).await?;
    let ControlReply::Registered { .. } = read_frame::<ControlReply, _>(&mut control_recv).await? else {
        anyhow::bail!("reply")
    };
    for target in [target.to_string(), "localhost:22".into(), "169.254.169.254:80".into()] {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &OpenStream::Connect { target: target.parse()?, peer_addr: "127.0.0.1:1".parse()? })
            .await?;
        assert_eq!(read_frame::<OpenResult, _>(&mut recv).await?, OpenResult::NotAllowed, "{target}");
    }
    Ok(())
}
