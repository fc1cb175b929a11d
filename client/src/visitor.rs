//! The client's `[[visitors]]`: a local TCP (or UDP) port whose connections (flows) reach
//! another client's private service. Each TCP connection is one `Visit` stream, each UDP flow
//! one `UdpVisit` flow: on the direct connection to the service's client when one is up
//! (`mode = "auto"` or `"direct"`, see `direct::path`), else through the tunnel up now, where
//! the server checks the verifier (derived from the secret, which never leaves this client)
//! and relays to the service's client. Refusals are told apart in the log and counted by
//! cause (`auth` for a wrong secret or a client name the service does not allow, `no_tunnel`
//! for a service whose client is offline, `unreachable` for an unknown service).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::listener::{ListenerStats, Refusal, access_log};
use wmproxy_tunnel::relay::{Limits, Meter, RelayStats, Tally};
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Tunnel, Upstream};
use wmproxy_wire::{OpenResult, OpenStream};

use crate::current::CurrentTunnel;
use crate::direct::path::{ATTEMPT_WITHIN, DirectPath};
use crate::local::STREAM_OPEN_TIMEOUT;

/// Accepts local connections until `shutdown`; each visits `visitor`'s service on the path
/// its mode picks (without one it is closed at once), counted in `stats` with an access log
/// line.
pub async fn serve(
    listener: TcpListener,
    (visitor, stats): (Arc<Visitor>, Arc<ListenerStats>),
    (current, path): (CurrentTunnel, Arc<DirectPath>),
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let verifier = visitor.verifier();
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let (current, visitor, stats, path) = (current.clone(), visitor.clone(), stats.clone(), path.clone());
        let header = OpenStream::Visit {
            client: visitor.client.clone(),
            service: visitor.service.clone(),
            verifier: verifier.clone(),
            peer_addr: peer,
        };
        let span = info_span!("stream", %peer);
        tracker.spawn(
            async move {
                let (_open, started, tally) = (stats.open(), Instant::now(), Tally::default());
                let meter = (&tally, &*stats);
                let carried = carry(&visitor, (&current, &path), tcp, &header, &meter).await;
                let result = match carried {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => {
                        if !matches!(e, OpenError::Failed(DataStreamError::Relay(_))) {
                            stats.refused(Refusal::of(&e));
                        }
                        log_refusal(&visitor, &e);
                        e.to_string()
                    }
                };
                access_log(&stats, (peer, stats.to.as_str()), started, tally.stats(), &result);
            }
            .instrument(span),
        );
    }
}

/// Carries one local connection on the path `visitor`'s mode picks: the direct connection
/// (`auto` when it is up; `direct`, waiting for it up to [`ATTEMPT_WITHIN`]) or the tunnel.
async fn carry(
    visitor: &Visitor,
    (current, path): (&CurrentTunnel, &DirectPath),
    tcp: TcpStream,
    header: &OpenStream,
    meter: &dyn Meter,
) -> Result<RelayStats, OpenError> {
    let direct = match visitor.mode {
        VisitMode::Relay => None,
        VisitMode::Auto => path.current(),
        VisitMode::Direct => match path.up_within(ATTEMPT_WITHIN).await {
            Some(direct) => Some(direct),
            None => {
                let why = path.last_error().unwrap_or_else(|| "not made yet".to_owned());
                warn!(visitor = %visitor.name, error = %why, "no direct connection (mode = \"direct\"); connection closed");
                return Err(OpenError::TunnelGone);
            }
        },
    };
    match direct {
        Some(direct) => {
            let limits = Limits { meter: Some(meter), ..Default::default() };
            direct.open_and_relay(header, tcp, (STREAM_OPEN_TIMEOUT, &limits)).await
        }
        None => current.carry_as(tcp, header.clone(), meter).await,
    }
}

/// Serves a UDP visitor until `shutdown`: each local sender address becomes a `UdpVisit` flow
/// on the path the mode picks when its first packet arrives, counted in `counted` as a
/// connection with its bytes.
pub async fn serve_udp(
    socket: UdpSocket,
    (visitor, counted): (Arc<Visitor>, Arc<ListenerStats>),
    (current, path, stats): (CurrentTunnel, Arc<DirectPath>, Arc<UdpStats>),
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let flows = VisitFlows { verifier: visitor.verifier(), visitor, current, path };
    let socket = Arc::new(socket);
    let listener = wmproxy_tunnel::udp::listener::serve(
        socket,
        &flows,
        Ask::Service,
        (stats, Some(counted)),
        STREAM_OPEN_TIMEOUT,
        tracker,
        shutdown,
    );
    listener.await;
}

/// The flows of a UDP visitor: the direct connection or the tunnel, as its mode says.
struct VisitFlows {
    visitor: Arc<Visitor>,
    verifier: Option<wmproxy_wire::Verifier>,
    current: CurrentTunnel,
    path: Arc<DirectPath>,
}

impl Upstream for VisitFlows {
    type By = ();

    /// A UDP visitor carries flows only.
    async fn open(&self, _peer: SocketAddr, _ask: Ask) -> Result<Opened<()>, OpenError> {
        Err(OpenError::Refused(OpenResult::NotAllowed))
    }

    fn flow(&self, peer: SocketAddr, _ask: Ask) -> Result<FlowRoute, OpenError> {
        let tunnel: Option<Arc<Tunnel>> = match self.visitor.mode {
            VisitMode::Relay => self.current.get(),
            VisitMode::Auto => self.path.current().or_else(|| self.current.get()),
            VisitMode::Direct => self.path.current(),
        };
        let tunnel = tunnel.ok_or(OpenError::TunnelGone)?;
        let header = OpenStream::UdpVisit {
            client: self.visitor.client.clone(),
            service: self.visitor.service.clone(),
            verifier: self.verifier.clone(),
            peer_addr: peer,
        };
        let permit = tunnel.flow_permit().ok_or(OpenError::Busy)?;
        Ok(FlowRoute { tunnel, header, ends_with: None, hold: vec![Box::new(permit)], limit: None })
    }
}

/// Says why a visit failed, naming the service; the secret is never logged.
fn log_refusal(visitor: &Visitor, e: &OpenError) {
    let (client, service, name) = (visitor.client.as_str(), visitor.service.as_str(), visitor.name.as_str());
    match e {
        OpenError::Refused(OpenResult::Forbidden) => warn!(
            visitor = name,
            client,
            service,
            "the visit was refused: wrong `secret_key`, or this client is not in the service's `allow_visitors`"
        ),
        OpenError::Refused(OpenResult::UnknownService) => {
            warn!(visitor = name, client, service, "the visit was refused: no such private service")
        }
        OpenError::Refused(OpenResult::Offline) => {
            warn!(visitor = name, client, service, "the visit was refused: that client is not connected")
        }
        OpenError::TunnelGone => debug!(visitor = name, "no path to the service right now; connection closed"),
        _ => debug!(visitor = name, error = %e, side = %e.side(), "visit ended without data or aborted"),
    }
}
