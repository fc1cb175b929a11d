//! Egress defaults (issue 13, item 12), seen on the wire: the server refuses to dial its own
//! machine however the address is written. The rules themselves are tested as pure functions
//! on addresses in `config/src/egress.rs` (every range the issue names, and the client's); here
//! only loopback targets are asked for, so even a wrong answer sends nothing off the machine.

use anyhow::{Result, bail, ensure};
use wmproxy_tests::{TOKEN, TestServer, backend, init_tracing, raw};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_wire::{ControlReply, ControlRequest, OpenResult, OpenStream};

/// What the server answers `conn`'s forward to `target`.
async fn answer(conn: &quinn::Connection, target: &str) -> Result<OpenResult> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let header = OpenStream::Connect { target: target.parse()?, peer_addr: "127.0.0.1:1".parse()? };
    write_frame(&mut send, &header).await?;
    Ok(read_frame::<OpenResult, _>(&mut recv).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_its_own_machine_in_every_spelling_unless_allowed() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let port = echo.port();
    let spellings = [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.2:{port}"),
        format!("localhost:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::1]:{port}"),
        format!("0.0.0.0:{port}"),
    ];
    for (allowed, server) in [
        (false, TestServer::start(|_| {}).await?),
        (true, TestServer::start(|f| f.egress.allow = vec!["127.0.0.1/32".parse().expect("cidr")]).await?),
    ] {
        let (_endpoint, conn, mut control, mut replies) = raw::authenticated(&server, "probe", TOKEN).await?;
        write_frame(&mut control, &ControlRequest::Register { services: vec![] }).await?;
        let ControlReply::Registered { .. } = read_frame::<ControlReply, _>(&mut replies).await? else {
            bail!("reply")
        };
        for target in &spellings {
            let got = answer(&conn, target).await?;
            // `allow 127.0.0.1/32` opens that address, also written IPv4-mapped or as a name that
            // resolves to it, and nothing else.
            let to_it = ["127.0.0.1:", "[::ffff:127.0.0.1]:", "localhost:"];
            let opened = allowed && to_it.iter().any(|p| target.starts_with(p));
            let expected = if opened { OpenResult::Ok } else { OpenResult::NotAllowed };
            ensure!(got == expected, "allow={allowed} {target}: {got:?}");
        }
    }
    Ok(())
}
