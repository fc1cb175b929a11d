//! Registration: one refused service does not sink the others.

use anyhow::Result;
use tokio::net::TcpListener;
use wmproxy_client::ClientStatus;
use wmproxy_tests::backend::{self, pattern};
use wmproxy_tests::{TestClient, TestServer, init_tracing, tcp_service, udp};
use wmproxy_wire::RegisterOutcome;

#[tokio::test]
async fn refused_ports_are_reported_and_other_services_work() -> Result<()> {
    init_tracing();
    let echo = backend::echo().await?;
    let server = TestServer::start(|_| {}).await?; // allowance: 1024-65535
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let taken_port = taken.local_addr()?.port();

    let mut config = server.client_config("home");
    config.services.push(tcp_service("privileged", echo, 80));
    config.services.push(tcp_service("clash", echo, taken_port));
    config.services.push(tcp_service("echo", echo, 0));
    let mut client = TestClient::start(config).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = &status else { unreachable!() };

    assert_eq!(services[0].name, "privileged");
    // The refusal tells this client what it may publish (issue 19, item 11).
    let refused = RegisterOutcome::PortNotAllowed { allowed: "1024-65535".into() };
    assert_eq!(services[0].outcome, refused);
    assert_eq!(refused.to_string(), "port not allowed for this client (allowed: 1024-65535)");
    assert_eq!(services[1].outcome, RegisterOutcome::PortInUse);
    let port = status.port_of("echo").expect("echo published");
    let msg = pattern(10_000, 1);
    assert_eq!(backend::round_trip(([127, 0, 0, 1], port).into(), &msg).await?, msg);
    Ok(())
}

#[tokio::test]
async fn udp_ports_follow_the_same_allowance_and_report_clashes() -> Result<()> {
    init_tracing();
    let echo = udp::echo().await?;
    let server = TestServer::start(|_| {}).await?; // allowance: 1024-65535
    let taken = udp::user().await?;
    let taken_port = taken.local_addr()?.port();
    // A TCP listener on a port does not make the UDP port of the same number busy.
    let tcp_only = TcpListener::bind("127.0.0.1:0").await?;

    let mut config = server.client_config("home");
    config.services.push(udp::service("privileged", echo, 53));
    config.services.push(udp::service("clash", echo, taken_port));
    config.services.push(udp::service("beside-tcp", echo, tcp_only.local_addr()?.port()));
    let mut client = TestClient::start(config).await?;
    let status = client.wait_for("connected", |s| matches!(s, ClientStatus::Connected { .. })).await?;
    let ClientStatus::Connected { services, .. } = &status else { unreachable!() };
    assert_eq!(services[0].outcome, RegisterOutcome::PortNotAllowed { allowed: "1024-65535".into() });
    assert_eq!(services[1].outcome, RegisterOutcome::PortInUse);
    let port = status.port_of("beside-tcp").expect("published beside a TCP listener");
    udp::round_trip(&udp::user().await?, ([127, 0, 0, 1], port).into(), b"dns?", |_| Ok(())).await?;
    Ok(())
}
