//! The service's side of a direct connection: a `Punch` from the server announces a visitor;
//! this client answers with its own certificate and addresses, sends towards the visitor's
//! addresses so that its NAT lets the visitor's packets in, and accepts the visitor's
//! connection on the tunnel's endpoint. Each stream of that connection is a `Visit`, checked
//! against the private service's own restrictions (the secret never left this client), then
//! dialed and relayed as a connection from the server would be.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use wmproxy_config::visitor::PrivateAccess;
use wmproxy_config::{Exposure, Publish, ServiceKind};
use wmproxy_tunnel::datastream;
use wmproxy_tunnel::tls::Fingerprint;
use wmproxy_tunnel::{RecvStream, SendStream, Tunnel};
use wmproxy_wire::{Candidates, Name, OpenResult, OpenStream, PeerInfo};

use super::identity::{EXPECT_FOR, PEER_NAME, Visitor};
use super::{Direct, lock, reachable};
use crate::local::{Exposer, STREAM_OPEN_TIMEOUT};

/// How long this side keeps sending towards a visitor's addresses.
const PUNCH_FOR: Duration = Duration::from_secs(5);

/// Direct connections accepted at once; one more is refused.
const MAX_ACCEPTED: usize = 256;

/// A `Punch` as the server sent it.
#[derive(Debug)]
pub struct Punch {
    pub visitor: Name,
    pub service: Name,
    pub fingerprint: [u8; 32],
    pub candidates: Candidates,
}

/// Answers a `Punch` on the stream the server opened: refused unless `punch.service` is one of
/// this client's private services and its tunnel is on QUIC; else expects the visitor, answers
/// with this client's certificate and addresses, and punches (in a task of its own).
pub async fn punch((send, recv): (SendStream, RecvStream), punch: Punch, ctx: &Exposer) {
    let private = ctx.services.borrow().iter().any(|s| s.name == punch.service && is_private(s));
    if !private {
        return datastream::refuse(send, OpenResult::UnknownService).await;
    }
    let Some(endpoint) = ctx.endpoint.clone() else {
        debug!("a punch while no QUIC tunnel is up; refused");
        return datastream::refuse(send, OpenResult::NotAllowed).await;
    };
    let Ok(punching) = ctx.direct.punches.clone().try_acquire_owned() else {
        debug!("too many punches under way; refused");
        return datastream::refuse(send, OpenResult::Busy).await;
    };
    let fingerprint = Fingerprint(punch.fingerprint);
    let until = tokio::time::Instant::now() + EXPECT_FOR;
    ctx.direct.expected.add(Visitor { fingerprint, name: punch.visitor.clone(), service: punch.service, until });
    let info = PeerInfo { fingerprint: ctx.direct.identity.fingerprint.0, candidates: Direct::locals(&endpoint) };
    if let Err(e) = datastream::reply(send, recv, &info).await {
        debug!(error = %e, "the server left before the punch was answered");
        return;
    }
    info!(visitor = %punch.visitor, "a visitor will connect directly; opening the way");
    let towards = endpoint.local_addr().map(|local| reachable(&punch.candidates, local)).unwrap_or_default();
    let span = info_span!("punch", visitor = %punch.visitor);
    let config = ctx.direct.identity.client_config(fingerprint);
    ctx.tracker.spawn(
        async move {
            match config {
                Ok(config) => open_the_way(&endpoint, config, &towards).await,
                Err(e) => warn!(error = %e, "no config to punch with"),
            }
            drop(punching);
        }
        .instrument(span),
    );
}

/// Sends handshakes from `endpoint` to each of `towards` for up to [`PUNCH_FOR`]: the packets
/// leaving make the NAT in front of this client let the visitor's packets from those addresses
/// in. The handshakes themselves need not complete (the visitor's end refuses them, it expects
/// nobody); one that does is closed.
async fn open_the_way(endpoint: &Endpoint, config: quinn::ClientConfig, towards: &[std::net::SocketAddr]) {
    let attempts = towards.iter().filter_map(|addr| endpoint.connect_with(config.clone(), *addr, PEER_NAME).ok());
    let all = futures_util::future::join_all(attempts.map(|connecting| async move {
        if let Ok(Ok(conn)) = tokio::time::timeout(PUNCH_FOR, connecting).await {
            conn.close(0u32.into(), b"punched");
        }
    }));
    all.await;
    debug!(addresses = towards.len(), "punching over");
}

/// Whether `service` is published privately.
fn is_private(service: &wmproxy_config::Service) -> bool {
    access_of(service).is_some()
}

/// Who may visit `service`, if it is published privately.
fn access_of(service: &wmproxy_config::Service) -> Option<&PrivateAccess> {
    match &service.exposure {
        Exposure::Tcp { publish: Publish::Private(access), .. }
        | Exposure::Udp { publish: Publish::Private(access), .. } => Some(access),
        _ => None,
    }
}

/// Accepts direct connections on `endpoint` until `stop` (the tunnel that owns it ended): each
/// from a visitor a `Punch` announced (the TLS handshake refuses any other), served in a task
/// of its own.
pub async fn run(endpoint: Endpoint, ctx: Arc<Exposer>, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            () = stop.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        if !ctx.direct.expected.any() {
            // Nobody was announced: not a visitor (a scan, a late punch). No answer at all.
            incoming.ignore();
            continue;
        }
        let handshake = ctx.direct.handshakes.clone().try_acquire_owned();
        let (Ok(handshake), true) = (handshake, ctx.direct.accepted.len() < MAX_ACCEPTED) else {
            debug!("too many direct connections or handshakes; refusing one");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        let span = info_span!("direct", peer = %incoming.remote_address(), visitor = tracing::field::Empty);
        ctx.tracker.clone().spawn(serve(incoming, ctx, handshake).instrument(span));
    }
}

/// Completes one incoming handshake (holding `handshake`, one of the permits of those under
/// way) and serves the connection's visits until it closes.
async fn serve(incoming: quinn::Incoming, ctx: Arc<Exposer>, handshake: tokio::sync::OwnedSemaphorePermit) {
    let conn = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, async { incoming.await }).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return debug!(error = %e, "a direct handshake failed"),
        Err(_) => return debug!("a direct handshake timed out"),
    };
    drop(handshake);
    let Some(visitor) = peer_certificate(&conn).and_then(|fp| ctx.direct.expected.find(&fp)) else {
        // The verifier already checked it; the entry may have expired in between.
        return conn.close(0u32.into(), b"not expected");
    };
    tracing::Span::current().record("visitor", visitor.name.as_str());
    info!(service = %visitor.service, rtt_ms = conn.rtt().as_millis() as u64, "direct connection from a visitor");
    let _listed = ctx.direct.accepted.add(&visitor, &conn);
    let tunnel = ctx.direct.tunnel(&conn, &ctx.tracker);
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (ctx, visitor, tunnel) = (ctx.clone(), visitor.name.clone(), tunnel.clone());
        let span = info_span!("stream", service = tracing::field::Empty, flow = tracing::field::Empty);
        ctx.tracker.clone().spawn(visit((send.into(), recv.into()), visitor, tunnel, ctx).instrument(span));
    }
    info!("direct connection closed");
}

/// Serves one stream of a direct connection from `visitor`: a `Visit` (a TCP connection) or a
/// `UdpVisit` (a UDP flow), with the same checks as the server makes for a relayed visit,
/// against this client's own config.
async fn visit((send, recv): (SendStream, RecvStream), visitor: Name, tunnel: Arc<Tunnel>, ctx: Arc<Exposer>) {
    let Some((send, recv, header)) = datastream::read_header(send, recv, STREAM_OPEN_TIMEOUT).await else {
        return;
    };
    let (service, verifier, peer, kind) = match header {
        OpenStream::Visit { service, verifier, peer_addr, .. } => (service, verifier, peer_addr, ServiceKind::Tcp),
        OpenStream::UdpVisit { service, verifier, peer_addr, .. } => (service, verifier, peer_addr, ServiceKind::Udp),
        _ => return datastream::refuse(send, OpenResult::NotAllowed).await,
    };
    tracing::Span::current().record("service", service.as_str());
    let found = ctx.services.borrow().iter().find(|s| s.name == service && s.exposure.kind() == kind).cloned();
    let Some((found, access)) = found.as_ref().and_then(|s| access_of(s).map(|a| (s, a))) else {
        return datastream::refuse(send, OpenResult::UnknownService).await;
    };
    if !access.spec(ctx.client.as_str(), found.name.as_str()).admits(visitor.as_str(), verifier.as_ref()) {
        info!("a direct visit refused: wrong secret, or a client the service does not allow");
        return datastream::refuse(send, OpenResult::Forbidden).await;
    }
    match kind {
        ServiceKind::Udp => {
            let limit = ctx.bandwidths.of(found, &ctx.services.borrow());
            crate::local::udp_flow(&tunnel, (send, recv), (&found.local_addr, limit), |_, _| true, |_| true).await;
        }
        _ => crate::local::carry_tcp((send, recv), found, peer, &ctx).await,
    }
}

/// The SHA-256 of the certificate the peer of `conn` presented.
fn peer_certificate(conn: &Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<rustls_pki_types::CertificateDer<'static>>>()?;
    certs.first().map(Fingerprint::of)
}

/// A direct connection accepted and open, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedStatus {
    /// The visiting client.
    pub visitor: String,
    /// The private service it visits.
    pub service: String,
    /// Where its packets come from.
    pub peer: String,
    /// The connection's round-trip time.
    pub rtt_ms: f64,
}

/// The direct connections accepted and still open.
#[derive(Debug, Default)]
pub struct Accepted(Arc<Mutex<Vec<(u64, Visitor, Connection)>>>);

/// Keeps a connection listed in [`Accepted`] until dropped.
pub struct Listed(Arc<Mutex<Vec<(u64, Visitor, Connection)>>>, u64);

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.0).retain(|(id, _, _)| *id != self.1);
    }
}

impl Accepted {
    fn add(&self, visitor: &Visitor, conn: &Connection) -> Listed {
        let id = conn.stable_id() as u64;
        lock(&self.0).push((id, visitor.clone(), conn.clone()));
        Listed(self.0.clone(), id)
    }

    fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Each open one.
    pub fn list(&self) -> Vec<AcceptedStatus> {
        let all = lock(&self.0);
        all.iter()
            .map(|(_, v, c)| AcceptedStatus {
                visitor: v.name.to_string(),
                service: v.service.to_string(),
                peer: c.remote_address().to_string(),
                rtt_ms: c.rtt().as_secs_f64() * 1000.0,
            })
            .collect()
    }
}
