//! The client's `[[visitors]]`: a local TCP port whose connections reach another client's
//! private service. Each connection is one `Visit` stream: on the direct connection to the
//! service's client when one is up (`mode = "auto"` or `"direct"`, see `direct::path`), else
//! through the tunnel up now, where the server checks the verifier (derived from the secret,
//! which never leaves this client) and relays the stream to the service's client. Refusals are told apart in the log and counted by cause
//! (`auth` for a wrong secret or a client name the service does not allow, `no_tunnel` for
//! a service whose client is offline, `unreachable` for an unknown service).

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};
use wmproxy_config::visitor::{VisitMode, Visitor};
use wmproxy_tunnel::OpenError;
use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::listener::{ListenerStats, Refusal, access_log};
use wmproxy_tunnel::relay::Tally;
use wmproxy_wire::{OpenResult, OpenStream};

use crate::current::CurrentTunnel;
use crate::direct::path::{ATTEMPT_WITHIN, DirectPath};
use crate::local::STREAM_OPEN_TIMEOUT;

/// Carries `tcp` as a `Visit` stream (`header`) on the direct connection `direct`.
async fn direct_carry(
    direct: &quinn::Connection,
    tcp: tokio::net::TcpStream,
    header: &OpenStream,
    meter: &dyn wmproxy_tunnel::relay::Meter,
) -> Result<wmproxy_tunnel::relay::RelayStats, OpenError> {
    let conn = wmproxy_tunnel::conn::Conn::Quic(direct.clone());
    let limits = wmproxy_tunnel::relay::Limits { meter: Some(meter), ..Default::default() };
    Ok(wmproxy_tunnel::datastream::open_and_relay(&conn, header, tcp, (STREAM_OPEN_TIMEOUT, &limits)).await?)
}

/// Accepts local connections until `shutdown`; each visits `visitor`'s service through the
/// current tunnel (without one it is closed at once), counted in `stats` with an access log
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
                let carried = match visitor.mode {
                    VisitMode::Relay => current.carry_as(tcp, header, &meter).await,
                    VisitMode::Auto => match path.current() {
                        Some(direct) => direct_carry(&direct, tcp, &header, &meter).await,
                        None => current.carry_as(tcp, header, &meter).await,
                    },
                    VisitMode::Direct => match path.up_within(ATTEMPT_WITHIN).await {
                        Some(direct) => direct_carry(&direct, tcp, &header, &meter).await,
                        None => {
                            let why = path.last_error().unwrap_or_else(|| "not made yet".to_owned());
                            warn!(visitor = %visitor.name, error = %why, "no direct connection (mode = \"direct\"); connection closed");
                            Err(OpenError::TunnelGone)
                        }
                    },
                };
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

/// Says why a visit failed, naming the service; the secret is never logged.
fn log_refusal(visitor: &Visitor, e: &OpenError) {
    let (client, service, name) = (visitor.client.as_str(), visitor.service.as_str(), visitor.name.as_str());
    match e {
        OpenError::Refused(OpenResult::Forbidden) => warn!(
            visitor = name,
            client,
            service,
            "the server refused the visit: wrong `secret_key`, or this client is not in the service's \
             `allow_visitors`"
        ),
        OpenError::Refused(OpenResult::UnknownService) => {
            warn!(visitor = name, client, service, "the server refused the visit: no such private service")
        }
        OpenError::Refused(OpenResult::Offline) => {
            warn!(visitor = name, client, service, "the server refused the visit: that client is not connected")
        }
        OpenError::TunnelGone => warn!(visitor = name, "no tunnel to the server right now; connection closed"),
        _ => debug!(visitor = name, error = %e, side = %e.side(), "visit ended without data or aborted"),
    }
}
