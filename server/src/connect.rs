//! Streams a client opens: local forwards and visits. A TCP `Connect` target is dialed, and a
//! UDP `UdpConnect` flow gets a socket connected to its target, if the egress policy allows; a
//! `Visit` is relayed to a private service ([`crate::visit`]).

use std::sync::Arc;

use tracing::{Span, debug, info, warn};
use wmproxy_config::ServerConfig;
use wmproxy_tunnel::datastream;
use wmproxy_tunnel::dial::OwnAddresses;
use wmproxy_tunnel::udp::{UdpStats, flow};
use wmproxy_tunnel::{RecvStream, SendStream};
use wmproxy_wire::{OpenResult, OpenStream, ServiceKind};

use crate::rendezvous::Rendezvous;
use crate::sessions::Session;
use crate::udp::UdpBudget;
use crate::visit::{Visit, Visits};

/// Serves one data stream opened by `session`'s client, under the span `stream{id, target,
/// flow}`, with the egress policy of `config`, the snapshot the stream took.
pub(crate) async fn serve(
    (send, recv): (SendStream, RecvStream),
    session: Arc<Session>,
    config: Arc<ServerConfig>,
    (udp, own): (UdpBudget, Arc<OwnAddresses>),
    visits: Visits,
) {
    let (egress, timeout) = (&config.egress, config.limits.stream_open_timeout());
    let Some((send, recv, header)) = datastream::read_header(send, recv, timeout).await else {
        return;
    };
    // The dial checks the name and port before any lookup, then every resolved address.
    let own = |ip| own.contains(ip);
    let (allow_target, allow_ip) = (|h: &str, p| egress.permits_target(h, p), |ip| egress.permits(ip, own));
    if matches!(header, OpenStream::Connect { .. } | OpenStream::UdpConnect { .. }) {
        session.egress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match header {
        OpenStream::Connect { target, peer_addr } => {
            Span::current().record("target", target.as_str());
            let Ok(_permit) = session.forwards.clone().try_acquire_owned() else {
                warn!("stream limit of this client reached; refusing a forward");
                return datastream::refuse(send, OpenResult::Busy).await;
            };
            debug!(%peer_addr, "forward requested");
            let dialed = wmproxy_tunnel::dial::dial(&target, timeout, allow_target, allow_ip).await;
            if let Err(OpenResult::NotAllowed) = dialed {
                info!(%target, user = %peer_addr, "a client's forward or proxy target refused by the [egress] policy");
            }
            let _ = datastream::complete(send, recv, dialed).await;
        }
        OpenStream::UdpConnect { target, peer_addr } => {
            Span::current().record("target", target.as_str());
            let (Some(_mine), Some(_all)) = (session.tunnel.flow_permit(), udp.permit()) else {
                debug!("UDP flow limit reached; refusing a flow");
                UdpStats::bump(&udp.stats.dropped_flow_limit);
                return datastream::refuse(send, OpenResult::Busy).await;
            };
            debug!(%peer_addr, "UDP forward flow requested");
            match wmproxy_tunnel::dial::dial_udp(&target, timeout, allow_target, allow_ip).await {
                Ok(socket) => flow::accept(&session.tunnel, Arc::new(socket), send, recv).await,
                Err(OpenResult::NotAllowed) => {
                    info!(%target, user = %peer_addr, "a client's UDP forward target refused by the [egress] policy");
                    datastream::refuse(send, OpenResult::NotAllowed).await;
                }
                Err(result) => {
                    debug!(%result, "UDP flow refused");
                    datastream::refuse(send, result).await;
                }
            }
        }
        OpenStream::Visit { client, service, verifier, peer_addr } => {
            debug!(%peer_addr, "visit requested");
            // Boxed, as the other visits: their state does not make every forward's task larger.
            let visit = Visit { client, service, verifier, kind: ServiceKind::Tcp };
            Box::pin(visits.serve((send, recv), &session, visit)).await;
        }
        OpenStream::UdpVisit { client, service, verifier, peer_addr } => {
            debug!(%peer_addr, "UDP visit requested");
            let visit = Visit { client, service, verifier, kind: ServiceKind::Udp };
            Box::pin(visits.serve_udp((send, recv), &session, visit, &udp)).await;
        }
        OpenStream::Rendezvous { client, service, kind, verifier, fingerprint, locals } => {
            let visit = Visit { client, service, verifier, kind };
            Box::pin(visits.rendezvous((send, recv), &session, Rendezvous { visit, fingerprint, locals })).await;
        }
        // A client in failover mode asks whether the server is still there.
        OpenStream::Ping => wmproxy_tunnel::probe::answer(send).await,
        // A client may not ask the server to expose anything.
        _ => datastream::refuse(send, OpenResult::NotAllowed).await,
    }
}
