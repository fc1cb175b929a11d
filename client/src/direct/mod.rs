//! Direct connections between clients, for private services (see `wmproxy_wire::private`).
//!
//! ```text
//! visitor's client (path)            server (rendezvous)            service's client (accept)
//!   Rendezvous ─────────────────────▶ admits it as a visit
//!                                     Punch ──────────────────────▶ expects the visitor's
//!                                     ◀──────────── Ok, PeerInfo ── certificate, punches
//!   ◀── Ok, PeerInfo (certificate,                                   towards its addresses
//!       addresses) ──
//!   QUIC handshake from the tunnel's socket to each address ══════▶ accepted on the tunnel's
//!   (the first to complete wins)                                    socket (same endpoint)
//!   Visit streams ════════════════════════════════════════════════▶ checked, dialed, relayed
//! ```
//!
//! Both sides use the QUIC endpoint of their tunnel: its socket is the one whose NAT mapping
//! the server saw, so the addresses the server hands out are the ones that reach it, and one
//! endpoint is client and server at once. Each client makes its own certificate at start
//! ([`identity`]); the server tells each side the other's fingerprint, and both pin it.
//!
//! - [`identity`]: the certificate, the TLS configs, the visitors expected now.
//! - [`accept`]: the service's side: answers a `Punch`, accepts and serves direct connections.
//! - [`path`]: the visitor's side: keeps a direct connection to the service up when it can,
//!   and says which path new connections take.
//!
//! Over the TCP transport there is no endpoint: visitors go through the server.

pub mod accept;
pub mod identity;
pub mod path;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn::Endpoint;
use tokio::sync::watch;
use tracing::Instrument;
use wmproxy_tunnel::Tunnel;
use wmproxy_wire::Candidates;

use crate::error::TlsSetupError;
use identity::{Expected, Identity};

/// The client's UDP resources, which flows on direct connections share with its tunnels'.
#[derive(Debug, Clone)]
pub struct Udp {
    /// The client's flow limit (`max_udp_flows`), over every tunnel.
    pub flows: Arc<tokio::sync::Semaphore>,
    /// Its UDP counters.
    pub stats: Arc<wmproxy_tunnel::udp::UdpStats>,
    /// Idle flows end after this.
    pub idle: std::time::Duration,
}

/// What both sides of direct connections share within one client.
#[derive(Debug)]
pub struct Direct {
    /// The certificate this client presents.
    pub identity: Identity,
    /// Visitors a `Punch` announced.
    pub expected: Arc<Expected>,
    server_config: quinn::ServerConfig,
    /// The QUIC tunnel up now and its endpoint, if any: a visitor asks for a rendezvous on
    /// that tunnel and connects from that endpoint, so that it leaves through the NAT mapping
    /// the server saw (with several servers, the latest tunnel up).
    endpoint: watch::Sender<Option<(Endpoint, Arc<Tunnel>)>>,
    /// Direct connections accepted and still open (`/status`).
    pub accepted: accept::Accepted,
    /// For UDP flows on direct connections.
    pub udp: Udp,
    /// Punches under way ([`identity::MAX_PUNCHES`]).
    pub punches: Arc<tokio::sync::Semaphore>,
    /// Incoming handshakes under way ([`identity::MAX_HANDSHAKES`]).
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

impl Direct {
    /// A fresh identity, no endpoint yet.
    pub fn new(udp: Udp) -> Result<Arc<Self>, TlsSetupError> {
        let identity = Identity::generate()?;
        let expected = Arc::new(Expected::default());
        let server_config = identity.server_config(expected.clone())?;
        let endpoint = watch::Sender::new(None);
        let accepted = accept::Accepted::default();
        let punches = Arc::new(tokio::sync::Semaphore::new(identity::MAX_PUNCHES));
        let handshakes = Arc::new(tokio::sync::Semaphore::new(identity::MAX_HANDSHAKES));
        Ok(Arc::new(Self { identity, expected, server_config, endpoint, accepted, udp, punches, handshakes }))
    }

    /// A [`Tunnel`] over the direct connection `conn`, sharing the client's UDP flow limit,
    /// with its flow table swept (and its datagrams read) by a task on `tracker` that ends
    /// with the connection.
    pub fn tunnel(&self, conn: &quinn::Connection, tracker: &tokio_util::task::TaskTracker) -> Arc<Tunnel> {
        let conn = wmproxy_tunnel::conn::Conn::Quic(conn.clone());
        let flows = wmproxy_tunnel::udp::FlowTable::new(self.udp.stats.clone());
        let streams = Arc::new(tokio::sync::Semaphore::new(identity::DIRECT_STREAMS as usize));
        tracker.spawn(flows.clone().run(conn.clone(), self.udp.idle).in_current_span());
        Arc::new(Tunnel::new(conn, flows, streams, self.udp.flows.clone()))
    }

    /// Makes `endpoint` (the QUIC tunnel `tunnel`'s, just up) accept direct connections, and
    /// the one visitors' direct connections leave from.
    pub fn install(&self, endpoint: &Endpoint, tunnel: &Arc<Tunnel>) {
        endpoint.set_server_config(Some(self.server_config.clone()));
        self.endpoint.send_replace(Some((endpoint.clone(), tunnel.clone())));
    }

    /// Forgets `endpoint` as the one to use (its tunnel ended), unless another took its place.
    pub fn withdraw(&self, endpoint: &Endpoint) {
        let ours = endpoint.local_addr().ok();
        self.endpoint.send_if_modified(|now| {
            let same = now.as_ref().is_some_and(|(e, _)| e.local_addr().ok() == ours);
            if same {
                *now = None;
            }
            same
        });
    }

    /// The tunnel and endpoint visitors' direct connections are made through, as they change.
    pub fn endpoints(&self) -> watch::Receiver<Option<(Endpoint, Arc<Tunnel>)>> {
        self.endpoint.subscribe()
    }

    /// This host's interface addresses, of the family of `endpoint`'s socket, with its port:
    /// where a peer on the same network reaches it. Loopback is left out.
    pub fn locals(endpoint: &Endpoint) -> Candidates {
        let Ok(local) = endpoint.local_addr() else { return Candidates::default() };
        let all = if_addrs::get_if_addrs().unwrap_or_default();
        let same_family = all.iter().filter(|i| !i.is_loopback() && i.ip().is_ipv4() == local.is_ipv4());
        Candidates::new(same_family.map(|i| SocketAddr::new(i.ip(), local.port())))
    }
}

/// The addresses of `candidates` that a socket of `local`'s family can send to.
pub fn reachable(candidates: &Candidates, local: SocketAddr) -> Vec<SocketAddr> {
    let canonical = |a: &SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    candidates.addrs().iter().map(canonical).filter(|a| a.is_ipv4() == local.is_ipv4()).collect()
}

/// A lock that a panic elsewhere leaves usable: every change under it is whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
