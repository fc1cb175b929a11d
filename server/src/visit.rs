//! Private services and their visitors. A private service is published with no public port
//! (the registry's `Owner::Private` holds who may visit and how it is reached); a visitor,
//! another client, opens a `Visit` stream (or a `UdpVisit` flow) naming the service's client
//! and the service, with the verifier derived from the secret. The server checks it here and
//! relays:
//!
//! ```text
//! visitor's client ── Visit, bytes ──▶ server: the client online? the service private?
//!                                        admitted? yes: Expose, the bytes behind it ──▶
//!                                        the service's client dials its service
//!                  ◀── its answer ───── ◀── answer (Ok, or the refusal)
//! visitor's stream ◀═══════ splice ═══════▶ the service's stream
//! ```
//!
//! The visitor's stream holds one of its client's forward permits, and the stream to the
//! service one of the service client's stream permits, so a visit is within both clients'
//! `max_streams_per_client`. Refusals are the [`OpenResult`]s `Offline` (no session under that
//! name), `UnknownService` (no private service of that name: a public one is not visitable)
//! and `Forbidden` (a wrong or missing verifier, or a client the service does not allow: not
//! told apart). Nothing about the verifier is logged.

use std::sync::Arc;

use tokio::net::UdpSocket;
use tracing::{Span, debug};
use wmproxy_tunnel::datastream::{self, DataStreamError};
use wmproxy_tunnel::relay::Meter;
use wmproxy_tunnel::splice::{SpliceError, splice};
use wmproxy_tunnel::udp::flow;
use wmproxy_tunnel::{Ask, OpenError, RecvStream, SendStream, Upstream};
use wmproxy_wire::{Name, OpenResult, OpenStream, ServiceKind, Verifier};

use crate::metrics::{Metrics, Refusal};
use crate::registry::Registry;
use crate::sessions::{Session, Sessions};
use crate::udp::UdpBudget;
use crate::upstream::ServiceUpstream;

/// What serving a visit needs. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Visits {
    pub sessions: Arc<Sessions>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// How long a stream to the service's client may take to be answered.
    pub open_timeout: std::time::Duration,
}

/// A visit as its header asks it.
#[derive(Debug)]
pub(crate) struct Visit {
    pub client: Name,
    pub service: Name,
    pub verifier: Option<Verifier>,
    /// What the service must be: `Tcp` for a `Visit` or a `Rendezvous`, `Udp` for a
    /// `UdpVisit`.
    pub kind: ServiceKind,
}

impl Visits {
    /// Serves one `Visit` stream of `visitor`'s client: checks it, opens the service's stream
    /// (within `timeout`), answers and splices the two until both directions end.
    pub async fn serve(&self, (send, recv): (SendStream, RecvStream), visitor: &Session, visit: Visit) {
        let span = Span::current();
        span.record("target", format!("{}/{}", visit.client, visit.service));
        let Ok(_permit) = visitor.forwards.clone().try_acquire_owned() else {
            debug!("stream limit of the visiting client reached; refusing a visit");
            return datastream::refuse(send, OpenResult::Busy).await;
        };
        let upstream = match self.admit(visitor, &visit) {
            Ok((_, upstream)) => upstream,
            Err(refused) => return datastream::refuse(send, refused).await,
        };
        // The service's stream is opened, and the visitor's bytes follow its header at once;
        // the service's answer is the visitor's (see `splice`).
        let Some(permit) = upstream.tunnel().stream_permit() else {
            return datastream::refuse(send, OpenResult::Busy).await;
        };
        let header =
            OpenStream::Expose { service: visit.service.clone(), peer_addr: visitor.tunnel.conn().remote_address() };
        let service = match datastream::open_pipelined(upstream.tunnel().conn(), &header, self.open_timeout).await {
            Ok(opened) => opened,
            Err(DataStreamError::Timeout) => return datastream::refuse(send, OpenResult::Timeout).await,
            Err(e) => {
                debug!(error = %e, "the private service's client is gone");
                return datastream::refuse(send, OpenResult::Offline).await;
            }
        };
        let counters = self.metrics.visitors.visit(&visitor.name, &visit.client, &visit.service);
        let guard = self.metrics.stream(&visit.client, &visit.service);
        let meter = (counters, guard);
        let spliced = splice((send, recv), service, self.open_timeout, Some(&meter)).await;
        match spliced {
            Ok(stats) => debug!(to_service = stats.tcp_to_quic, to_visitor = stats.quic_to_tcp, "visit finished"),
            Err(SpliceError::Refused(result)) => debug!(%result, "the private service refused the visit"),
            Err(e) => debug!(error = %e, "visit aborted"),
        }
        drop(permit);
    }

    /// Serves one `UdpVisit` flow stream of `visitor`'s client: checks it, opens a flow to the
    /// service's client, and joins the two flows through a pair of connected loopback sockets
    /// until either ends. The visitor's flow counts against its client's and the server's flow
    /// limits, the service's against the service client's and the server's.
    pub async fn serve_udp(
        &self,
        (send, recv): (SendStream, RecvStream),
        visitor: &Session,
        visit: Visit,
        budget: &UdpBudget,
    ) {
        Span::current().record("target", format!("{}/{}", visit.client, visit.service));
        let (Some(_mine), Some(_all)) = (visitor.tunnel.flow_permit(), budget.permit()) else {
            debug!("UDP flow limit reached; refusing a UDP visit");
            return datastream::refuse(send, OpenResult::Busy).await;
        };
        let upstream = match self.admit(visitor, &visit) {
            Ok((_, upstream)) => upstream,
            Err(refused) => return datastream::refuse(send, refused).await,
        };
        let route = match upstream.flow(visitor.tunnel.conn().remote_address(), Ask::Service) {
            Ok(route) => route,
            Err(e) => return datastream::refuse(send, answer_for(&e)).await,
        };
        let Ok((to_visitor, to_service)) = socket_pair().await else {
            return datastream::refuse(send, OpenResult::Unreachable).await;
        };
        let counters = self.metrics.visitors.visit(&visitor.name, &visit.client, &visit.service);
        // The visitor's flow sends the service's packets into the visitor's tunnel: "out".
        let meter: Arc<dyn Meter> = Arc::new(Swapped(counters));
        let ends = tokio_util::sync::CancellationToken::new();
        let service_side =
            flow::open_connected(route.tunnel.clone(), to_service, route.header, self.open_timeout, ends.clone());
        let visitor_side = flow::accept_ending_with(&visitor.tunnel, to_visitor, (send, recv), (ends, Some(meter)));
        tokio::join!(service_side, visitor_side);
        drop(route.hold);
    }

    /// The session of the client `visit` names and the upstream of its private service, if
    /// `visitor` may visit it; else the refusal.
    pub fn admit(&self, visitor: &Session, visit: &Visit) -> Result<(Arc<Session>, ServiceUpstream), OpenResult> {
        let Some(owner) = self.sessions.get(&visit.client) else {
            debug!("visit to a client that is not connected");
            return Err(OpenResult::Offline);
        };
        let Some((access, upstream)) = self.registry.private(owner.id, &visit.service, visit.kind) else {
            debug!("visit to a service that is not a published private service");
            return Err(OpenResult::UnknownService);
        };
        if !access.admits(visitor.name.as_str(), visit.verifier.as_ref()) {
            // Counted (and shown in the dashboard's events); logged at debug, so that a client
            // trying secrets cannot flood the log.
            debug!(visitor = %visitor.name, "visit refused: wrong secret, or a client the service does not allow");
            self.metrics.refused(Refusal::VisitForbidden);
            return Err(OpenResult::Forbidden);
        }
        Ok((owner, upstream))
    }
}

/// A meter with its two directions the other way round.
#[derive(Debug)]
struct Swapped<M>(M);

impl<M: Meter> Meter for Swapped<M> {
    fn passed(&self, tcp_to_quic: u64, quic_to_tcp: u64) {
        self.0.passed(quic_to_tcp, tcp_to_quic);
    }
}

/// Two UDP sockets on loopback, each connected to the other: what one flow delivers to its
/// socket arrives at the other's, which sends it into the other flow.
async fn socket_pair() -> std::io::Result<(Arc<UdpSocket>, Arc<UdpSocket>)> {
    let a = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let b = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    a.connect(b.local_addr()?).await?;
    b.connect(a.local_addr()?).await?;
    Ok((Arc::new(a), Arc::new(b)))
}

/// What the visitor is told when the service could not be reached.
pub(crate) fn answer_for(e: &OpenError) -> OpenResult {
    match e {
        OpenError::Refused(result) => *result,
        OpenError::Busy => OpenResult::Busy,
        OpenError::TunnelGone | OpenError::Failed(DataStreamError::Connection(_)) => OpenResult::Offline,
        OpenError::Failed(DataStreamError::Timeout) => OpenResult::Timeout,
        _ => OpenResult::Unreachable,
    }
}
