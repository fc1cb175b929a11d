//! Between tenants.
//!
//! Host names: a host name belongs to the first client that claims it, with every path under
//! it, on the vhost and HTTPS ports alike; a subdomain is a host name like any other and needs
//! the client's `allow_domains`; routes are claimed once; each registration is capped (host
//! names and locations per service, routes per client) and its locations are checked. The
//! other tenant is a hand-driven client (`raw`), so it can ask for what a client's config would
//! never let it write.
//!
//! Names: a client name has one machine. A second machine is refused while the first answers;
//! the same machine (its resume secret) replaces its session at once; the shared token has a
//! cap on live names.
//!
//! Reloads: a reload that narrows a client's allowances or removes a group takes back from the
//! live sessions what it no longer allows, and tells the clients; a client caught in its
//! handshake or its first registration by the reload gets nothing the new config refuses.

mod hosts;
mod metrics;
mod names;
mod reload;

use std::net::SocketAddr;

use anyhow::{Result, bail};
use tokio::net::TcpStream;
use wmproxy_tests::proxy::keep_alive_request;
use wmproxy_tests::{TOKEN, TestServer, raw};
use wmproxy_tunnel::stream::{read_frame, write_frame};
use wmproxy_wire::{ControlReply, ControlRequest, RegisterOutcome, ServiceSpec};

/// A hand-driven client. It serves no streams, so it never answers the server's pings.
struct Tenant {
    _endpoint: quinn::Endpoint,
    _conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Tenant {
    async fn join(server: &TestServer, client: &str) -> Result<Self> {
        Self::join_with(server, client, TOKEN).await
    }

    /// Authenticates as `client` with `token`; registers nothing yet.
    async fn join_with(server: &TestServer, client: &str, token: &str) -> Result<Self> {
        let (_endpoint, _conn, send, recv) = raw::authenticated(server, client, token).await?;
        Ok(Self { _endpoint, _conn, send, recv })
    }

    /// Registers `services` (in place of those registered before) and returns their outcomes.
    async fn register(&mut self, services: Vec<ServiceSpec>) -> Result<Vec<RegisterOutcome>> {
        write_frame(&mut self.send, &ControlRequest::Register { services }).await?;
        let ControlReply::Registered { results } = read_frame(&mut self.recv).await? else { bail!("unexpected reply") };
        Ok(results.into_iter().map(|r| r.outcome).collect())
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The status and body of `GET path` with `Host: host` on the vhost port.
async fn get(vhost: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut conn = TcpStream::connect(vhost).await?;
    keep_alive_request(&mut conn, host, path).await
}

/// A TCP service named `service` on public port `port` (0: any).
fn tcp(service: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        name: wmproxy_tests::name(service),
        kind: wmproxy_wire::ServiceKind::Tcp,
        remote_port: port,
        group: None,
        http: None,
        bandwidth_limit: None,
        private: None,
    }
}
