//! A client whose UDP never reaches the server (a firewall dropping it) is told the likely
//! cause, not only "timed out" (item 16).

use anyhow::{Result, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_tests::{TestClient, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_over_udp_names_the_firewall() -> Result<()> {
    let server = TestServer::start(|_| {}).await?;
    // A UDP port that swallows everything, as a firewall dropping UDP does.
    let blackhole = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut config = server.client_config("blocked");
    config.servers[0].addr = blackhole.local_addr()?.to_string();
    let mut client = TestClient::start(config).await?;
    let status = client
        .wait_for("the first attempt failed", |s| matches!(s, ClientStatus::Connecting { last_error: Some(_), .. }));
    let status = status.await?;
    let ClientStatus::Connecting { last_error: Some(error), .. } = &status else { anyhow::bail!("{status:?}") };
    ensure!(error.contains("no answer from the server") && error.contains("a firewall may block UDP"), "{error}");
    ensure!(error.contains(&format!("UDP port {}", blackhole.local_addr()?.port())), "{error}");
    Ok(())
}
