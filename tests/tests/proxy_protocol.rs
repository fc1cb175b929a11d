//! PROXY protocol: a service configured for it learns the real user address from the header
//! the client sends before the user's bytes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use wmproxy_config::ProxyProtocol;
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service};

/// A backend that parses the PROXY header (v1 or v2, with `ppp`), then answers with the
/// source address it names and echoes the first payload bytes after it.
async fn reporting_backend() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 512];
                let mut n = 0;
                let (source, used) = loop {
                    match stream.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                    if let Ok(h) = ppp::v2::Header::try_from(&buf[..n]) {
                        let used = h.len();
                        let source = match h.addresses {
                            ppp::v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
                            _ => return,
                        };
                        break (source, used);
                    }
                    if let Ok(h) = ppp::v1::Header::try_from(std::str::from_utf8(&buf[..n]).unwrap_or_default()) {
                        let used = h.header.len();
                        let source = match h.addresses {
                            ppp::v1::Addresses::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
                            _ => return,
                        };
                        break (source, used);
                    }
                };
                // The user's bytes follow the header, until the user's end.
                let mut rest = buf[used..n].to_vec();
                if stream.read_to_end(&mut rest).await.is_err() {
                    return;
                }
                let reply = format!("{source} {}", String::from_utf8_lossy(&rest));
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_reads_the_users_real_address_v1_and_v2() -> Result<()> {
    init_tracing();
    let server = TestServer::start(|_| {}).await?;
    let backend = reporting_backend().await?;
    let mut config = server.client_config("home");
    for (name, version) in [("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)] {
        let mut service = tcp_service(name, backend, 0);
        if let wmproxy_config::Exposure::Tcp { proxy_protocol, .. } = &mut service.exposure {
            *proxy_protocol = Some(version);
        }
        config.services.push(service);
    }
    let mut client = TestClient::start(config).await?;
    for name in ["v1", "v2"] {
        let public = SocketAddr::from(([127, 0, 0, 1], client.port_of(name).await?));
        let socket = TcpSocket::new_v4()?;
        socket.bind("127.0.0.9:0".parse()?)?;
        let mut user = socket.connect(public).await?;
        let me = user.local_addr()?;
        user.write_all(b"hello").await?;
        user.shutdown().await?;
        let mut reply = String::new();
        user.read_to_string(&mut reply).await.context("reply")?;
        ensure!(reply == format!("{me} hello"), "{name}: backend saw `{reply}`, user is {me}");
    }
    Ok(())
}
