//! The visitor's side of a direct connection: [`DirectPath`] keeps one up to the private
//! service's client when it can, and says which path a new connection takes.
//!
//! While the tunnel is up on QUIC, it asks the server for a rendezvous, then tries every
//! address the server gave (the peer's NAT mapping, the next ports, its interface addresses)
//! at once from the tunnel's endpoint; the first handshake to complete is the direct
//! connection. If none completes within [`ATTEMPT_WITHIN`], it tries again later (2 s, doubling
//! up to a minute). Once up, the connection sends keep-alives; when it is lost (a path cut:
//! nothing heard for `identity::IDLE`), new connections go through the server again and a new
//! rendezvous is tried at once. Connections in flight on a lost direct connection are aborted
//! (a reset), never cut short as if they had ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use quinn::{Connection, Endpoint};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tunnel::Tunnel;
use wmproxy_tunnel::listener::ListenerStats;
use wmproxy_tunnel::stream::read_frame;
use wmproxy_tunnel::tls::Fingerprint;
use wmproxy_wire::{OpenStream, PeerInfo};

use super::identity::PEER_NAME;
use super::{Direct, lock, reachable};
use crate::local::STREAM_OPEN_TIMEOUT;

/// How long the handshakes of one attempt may take, over all addresses.
pub const ATTEMPT_WITHIN: Duration = Duration::from_secs(3);

/// The first wait after a failed attempt; it doubles up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// One visitor's direct path: the connection if it is up, and what happened last.
#[derive(Debug)]
pub struct DirectPath {
    visitor: Arc<Visitor>,
    /// The visitor's counters (its listener's).
    stats: Arc<ListenerStats>,
    /// The direct connection as a tunnel (streams, and UDP flows with its own flow table).
    conn: watch::Sender<Option<Arc<Tunnel>>>,
    last_error: Mutex<Option<String>>,
}

/// A visitor as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PathStatus {
    /// The visitor's name.
    pub name: String,
    /// The service it reaches, `client/service`.
    pub to: String,
    /// `auto`, `direct` or `relay`.
    pub mode: &'static str,
    /// How a new connection goes now: `direct`, `relayed` (through the server) or `none`
    /// (`mode = "direct"` with no direct connection).
    pub path: &'static str,
    /// The direct connection's round-trip time, when it is up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Why the latest direct attempt failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Connections (UDP: flows) accepted, on either path.
    pub connections: u64,
    /// Bytes from local users to the service.
    pub bytes_in: u64,
    /// Bytes from the service to local users.
    pub bytes_out: u64,
}

impl DirectPath {
    /// The path of `visitor`, down; `stats` are its listener's counters.
    pub fn new(visitor: Arc<Visitor>, stats: Arc<ListenerStats>) -> Arc<Self> {
        Arc::new(Self { visitor, stats, conn: watch::Sender::new(None), last_error: Mutex::default() })
    }

    /// The visitor's mode.
    pub fn mode(&self) -> VisitMode {
        self.visitor.mode
    }

    /// The visitor's name.
    pub fn name(&self) -> &str {
        self.visitor.name.as_str()
    }

    /// The direct connection, if it is up.
    pub fn current(&self) -> Option<Arc<Tunnel>> {
        self.conn.borrow().as_ref().filter(|t| t.conn().close_reason().is_none()).cloned()
    }

    /// The direct connection once it is up, waiting at most `within`.
    pub async fn up_within(&self, within: Duration) -> Option<Arc<Tunnel>> {
        let mut watch = self.conn.subscribe();
        let up = watch.wait_for(|t| t.as_ref().is_some_and(|t| t.conn().close_reason().is_none()));
        match tokio::time::timeout(within, up).await {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        }
    }

    /// Why the latest attempt failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// What `/status` shows.
    pub fn status(&self) -> PathStatus {
        let conn = self.current();
        let counted = self.stats.snapshot();
        let mode = self.visitor.mode;
        let path = match (&conn, mode) {
            (Some(_), _) => "direct",
            (None, VisitMode::Direct) => "none",
            (None, _) => "relayed",
        };
        PathStatus {
            name: self.visitor.name.to_string(),
            to: format!("{}/{}", self.visitor.client, self.visitor.service),
            mode: mode.as_str(),
            path,
            rtt_ms: conn.map(|t| t.conn().rtt().as_secs_f64() * 1000.0),
            last_error: self.last_error(),
            connections: counted.connections,
            bytes_in: counted.bytes_in,
            bytes_out: counted.bytes_out,
        }
    }

    /// Keeps a direct connection up whenever a tunnel is on QUIC, until `stop`; its flow
    /// table's task runs on `tracker`.
    pub async fn maintain(self: Arc<Self>, direct: Arc<Direct>, (tracker, stop): (TaskTracker, CancellationToken)) {
        let mut endpoints = direct.endpoints();
        let mut wait = RETRY_FIRST;
        loop {
            let ready = endpoints.borrow_and_update().clone().filter(|(_, t)| t.conn().close_reason().is_none());
            let Some((endpoint, tunnel)) = ready else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = endpoints.changed() => if changed.is_err() { return },
                }
                continue;
            };
            let attempt = tokio::select! {
                () = stop.cancelled() => return,
                attempt = self.attempt(&direct, &endpoint, &tunnel) => attempt,
            };
            match attempt {
                Ok(conn) => {
                    info!(peer = %conn.remote_address(), rtt_ms = conn.rtt().as_millis() as u64, "direct connection up");
                    *lock(&self.last_error) = None;
                    self.conn.send_replace(Some(direct.tunnel(&conn, &tracker)));
                    tokio::select! {
                        () = stop.cancelled() => return conn.close(0u32.into(), b"stopping"),
                        reason = conn.closed() => warn!(%reason, "direct connection lost; new connections go through the server"),
                    }
                    self.conn.send_replace(None);
                    wait = RETRY_FIRST;
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_s = wait.as_secs(), "no direct connection; connections go through the server");
                    *lock(&self.last_error) = Some(e);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_AT_MOST);
        }
    }

    /// One rendezvous and one round of handshakes.
    async fn attempt(
        &self,
        direct: &Direct,
        endpoint: &Endpoint,
        tunnel: &wmproxy_tunnel::Tunnel,
    ) -> Result<Connection, String> {
        let v = &self.visitor;
        let header = OpenStream::Rendezvous {
            client: v.client.clone(),
            service: v.service.clone(),
            kind: v.kind,
            verifier: v.verifier(),
            fingerprint: direct.identity.fingerprint.0,
            locals: Direct::locals(endpoint),
        };
        let (_send, mut recv) = tunnel.open_confirmed(&header, STREAM_OPEN_TIMEOUT).await.map_err(|e| match e {
            wmproxy_tunnel::datastream::DataStreamError::Refused(r) => {
                format!("the server refused the rendezvous: {r}")
            }
            other => format!("rendezvous: {other}"),
        })?;
        let peer = tokio::time::timeout(STREAM_OPEN_TIMEOUT, read_frame::<PeerInfo, _>(&mut recv))
            .await
            .map_err(|_| "rendezvous: no answer in time".to_owned())?
            .map_err(|e| format!("rendezvous: {e}"))?;
        let local = endpoint.local_addr().map_err(|e| e.to_string())?;
        let towards = reachable(&peer.candidates, local);
        let config = direct.identity.client_config(Fingerprint(peer.fingerprint)).map_err(|e| e.to_string())?;
        debug!(candidates = ?towards, "trying the peer's addresses");
        let mut attempts: FuturesUnordered<_> =
            towards.iter().filter_map(|addr| endpoint.connect_with(config.clone(), *addr, PEER_NAME).ok()).collect();
        let first = async {
            while let Some(done) = attempts.next().await {
                match done {
                    Ok(conn) => return Some(conn),
                    Err(e) => debug!(error = %e, "a candidate failed"),
                }
            }
            None
        };
        match tokio::time::timeout(ATTEMPT_WITHIN, first).await {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => Err(format!("none of the peer's {} addresses completed a handshake", towards.len())),
            Err(_) => Err(format!(
                "none of the peer's {} addresses answered within {} s (a NAT on the way may map ports at random)",
                towards.len(),
                ATTEMPT_WITHIN.as_secs()
            )),
        }
    }
}
