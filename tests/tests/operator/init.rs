//! The first five minutes (issue 18): `wmproxy-server init` and `wmproxy-client init` write
//! starter configs that work together as written, but for the test's ports (the shipped
//! defaults are fixed ports): the client pins the certificate the server's init generated and
//! connects with its token, and a service appended to the client's file is published.

use anyhow::{Result, ensure};
use wmproxy_client::ClientStatus;
use wmproxy_client::starter::Starter;
use wmproxy_tests::{TestClient, TestServer, backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_starter_configs_connect_as_written() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server_file, client_file) = (dir.path().join("server.toml"), dir.path().join("client.toml"));
    let started = wmproxy_server::starter::init(&server_file, &dir.path().join("state"))?;
    // Only the fixed ports change: the tunnel, its TCP transport and the control API.
    let text = std::fs::read_to_string(&server_file)?;
    let text = text.replace("bind = \"[::]:7835\"", "bind = \"127.0.0.1:0\"").replace("127.0.0.1:8837", "127.0.0.1:0");
    std::fs::write(&server_file, text)?;
    let server = TestServer::start_from(&server_file).await?;
    ensure!(server.fingerprint == started.fingerprint, "the server runs the certificate init generated");

    let server_addr = server.addr.to_string();
    let fingerprint = started.fingerprint.to_string();
    let starter = Starter { server: &server_addr, fingerprint: &fingerprint, token: &started.token, name: "home" };
    wmproxy_client::starter::init(&client_file, &starter)?;
    let echo = backend::echo().await?;
    let port = backend::fixed_port().await?;
    let text = std::fs::read_to_string(&client_file)?.replace("127.0.0.1:8838", "127.0.0.1:0");
    let service = format!("\n[[services]]\nname = \"echo\"\nlocal_addr = \"{echo}\"\nremote_port = {port}\n");
    std::fs::write(&client_file, text + &service)?;
    let (mut client, _) = TestClient::start_from(&client_file).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    ensure!(status.port_of("echo") == Some(port), "published: {status:?}");
    // The server's public ports listen on every address (::), so 127.0.0.1 reaches it.
    backend::assert_echo(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 512, 1).await?;
    Ok(())
}
