//! The network test bed itself (issue 14, first part): the home host reaches the public host
//! only through its NAT, which masquerades it; nothing leaves the bed; the NAT's loss setting
//! drops what it says; the namespaces are gone once the bed is dropped; and a real server and
//! client run in it, the client behind the NAT. Skipped, saying why, where the bed cannot be
//! built (not root, a tool missing).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wmproxy_tests::netbed::{self, Mapping, Netbed};

/// A TCP server on the public host (port 7000) that answers each connection with the
/// address it came from.
const WHO_AM_I: &str = "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('198.18.0.1', 7000))\ns.listen(16)\nwhile True:\n    c, a = s.accept()\n    c.sendall(a[0].encode())\n    c.close()\n";

/// Connects to `addr` within `timeout_secs` and prints what it answers, or the error.
fn ask(addr: &str, timeout_secs: f32) -> String {
    format!(
        "import socket\ntry:\n    c = socket.create_connection({addr}, timeout={timeout_secs})\n    print(c.recv(64).decode())\n\
         except OSError as e:\n    print('error', e)\n"
    )
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn answer(bed: &Netbed, ns: &str, script: &str) -> Result<String> {
    let out = bed.exec(ns, &["python3", "-c", script])?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn home_reaches_public_through_the_nat_and_nothing_else() -> Result<()> {
    if netbed::skip()? {
        return Ok(());
    }
    let bed = Netbed::start(Mapping::Random)?;
    let names = [bed.public(), bed.nat(), bed.home()];
    let server = bed.command(&bed.public(), &["python3", "-c", WHO_AM_I]).stdout(Stdio::null()).spawn()?;
    let _server = Killed(server);

    // Readiness: poll until the server answers (it starts in well under a second).
    let public = format!("('{}', 7000)", netbed::PUBLIC);
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = answer(&bed, &bed.home(), &ask(&public, 2.0))?;
        if !seen.starts_with("error") || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(seen == netbed::NAT_WAN.to_string(), "the public host saw {seen:?}, not the NAT's address");

    // No way out of the bed, either side: no route past it.
    let outside = answer(&bed, &bed.home(), &ask("('192.0.2.1', 80)", 2.0))?;
    ensure!(outside.starts_with("error"), "the home host reached 192.0.2.1: {outside}");
    let inside = answer(&bed, &bed.public(), &ask(&format!("('{}', 22)", netbed::HOME), 2.0))?;
    ensure!(inside.contains("unreachable"), "the public host reached the home host directly: {inside}");

    // Loss: all of it is a blackhole; none restores the path.
    bed.set_loss(1000)?;
    let lost = answer(&bed, &bed.home(), &ask(&public, 1.0))?;
    ensure!(lost.contains("timed out"), "through a blackhole: {lost}");
    bed.set_loss(0)?;
    ensure!(answer(&bed, &bed.home(), &ask(&public, 2.0))? == netbed::NAT_WAN.to_string());
    bed.set_rate(200)?;
    bed.set_mtu(1280)?;
    bed.set_udp_timeout(30)?;
    bed.flush_mappings()?;
    ensure!(answer(&bed, &bed.home(), &ask(&public, 2.0))? == netbed::NAT_WAN.to_string());

    drop(_server);
    drop(bed);
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    let left = String::from_utf8_lossy(&left.stdout);
    if names.iter().any(|n| left.contains(n.as_str())) {
        bail!("namespaces left behind: {left}");
    }
    Ok(())
}

/// The tunnel over the bed: a server on the public host, a client behind the NAT publishing a
/// service of its home network; a user on the public host reaches it, and the server sees the
/// client at the NAT's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_behind_the_nat_is_published_on_the_public_host() -> Result<()> {
    use wmproxy_tests::{TestClient, backend, tcp_service};
    let Some((_bed, public, home)) = netbed::start_or_skip(Mapping::Random)? else { return Ok(()) };
    let mut server = netbed::public_server(&public).await?;
    let api = server.handle.control_addr().context("the control API")?;
    let echo = home.run(backend::echo()).await??;
    let mut config = server.client_config("behind-nat");
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = home.run(TestClient::start(config)).await??;
    let port = client.port_of("echo").await?;

    let message = backend::pattern(256 * 1024, 7);
    let sent = message.clone();
    let back = public.run(async move { backend::round_trip((netbed::PUBLIC, port).into(), &sent).await });
    ensure!(back.await?? == message, "the echo through the NAT came back altered");
    let status: serde_json::Value = serde_json::from_str(&public.get(api, "/status").await?)?;
    let address = status["clients"][0]["address"].as_str().unwrap_or_default().to_owned();
    ensure!(address.starts_with(&format!("{}:", netbed::NAT_WAN)), "the server saw the client at {address}");

    client.stop().await?;
    server.stop().await?;
    Ok(())
}
