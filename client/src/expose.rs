//! Streams the server opens: a user reached one of our published services. For TCP, dial the
//! service's local address, answer, relay, and log the finished connection (the access log,
//! per service; see `local`); for a UDP flow, connect a socket to it and run the flow. A user
//! of one of the server's proxies (`ProxyConnect`) is dialed under our egress policy; a
//! `Punch` announces a visitor's direct connection (`direct::accept`).

use std::sync::Arc;

use tracing::{Span, debug, info};
use wmproxy_config::ServiceKind;
use wmproxy_tunnel::{RecvStream, SendStream};
use wmproxy_tunnel::{Tunnel, datastream};
use wmproxy_wire::{OpenResult, OpenStream};

pub use crate::local::{Exposer, STREAM_OPEN_TIMEOUT};
use crate::local::{carry_tcp, udp_flow};

/// Serves one stream the server opened on `tunnel`, under the span `stream{service, peer,
/// flow}`.
pub async fn serve((send, recv): (SendStream, RecvStream), tunnel: Arc<Tunnel>, ctx: Arc<Exposer>) {
    let Some((send, recv, header)) = datastream::read_header(send, recv, STREAM_OPEN_TIMEOUT).await else {
        return;
    };
    match header {
        OpenStream::Expose { service, peer_addr } => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            let found = ctx
                .services
                .borrow()
                .iter()
                .find(|s| s.name == service && s.exposure.kind() != ServiceKind::Udp)
                .cloned();
            let Some(found) = found else {
                return datastream::refuse(send, OpenResult::UnknownService).await;
            };
            carry_tcp((send, recv), &found, peer_addr, &ctx).await;
        }
        OpenStream::Punch { visitor, service, fingerprint, candidates } => {
            Span::current().record("service", service.as_str());
            let punch = crate::direct::accept::Punch { visitor, service, fingerprint, candidates };
            // Boxed: a rare stream's state does not make every connection's task larger.
            Box::pin(crate::direct::accept::punch((send, recv), punch, &ctx)).await;
        }
        OpenStream::UdpExpose { service, peer_addr } => {
            Span::current().record("service", service.as_str()).record("peer", tracing::field::display(peer_addr));
            let found = {
                let services = ctx.services.borrow();
                let found = services.iter().find(|s| s.name == service && s.exposure.kind() == ServiceKind::Udp);
                found.map(|s| (s.local_addr.clone(), ctx.bandwidths.of(s, &services)))
            };
            let Some((local, limit)) = found else {
                return datastream::refuse(send, OpenResult::UnknownService).await;
            };
            // Local services may be anywhere the client can reach, loopback included.
            udp_flow(&tunnel, (send, recv), (&local, limit), |_, _| true, |_| true).await;
        }
        OpenStream::ProxyConnect { target, peer_addr } => {
            Span::current().record("service", "proxy").record("peer", tracing::field::display(peer_addr));
            debug!(%target, "proxy connection from the server");
            let (egress, own) = (&ctx.egress, |ip| ctx.own_addresses.contains(ip));
            let (allow_target, allow_ip) = (|h: &str, p| egress.permits_target(h, p), |ip| egress.permits(ip, own));
            let dialed = wmproxy_tunnel::dial::dial(&target, STREAM_OPEN_TIMEOUT, allow_target, allow_ip).await;
            if let Err(OpenResult::NotAllowed) = dialed {
                info!(%target, user = %peer_addr, "a server proxy's target refused by this client's [egress] policy");
            }
            let _ = datastream::complete(send, recv, dialed).await;
        }
        OpenStream::ProxyUdpConnect { target, peer_addr } => {
            Span::current().record("service", "proxy-udp").record("peer", tracing::field::display(peer_addr));
            let (egress, own) = (&ctx.egress, |ip| ctx.own_addresses.contains(ip));
            let (allow_target, allow_ip) = (|h: &str, p| egress.permits_target(h, p), |ip| egress.permits(ip, own));
            udp_flow(&tunnel, (send, recv), (&target, None), allow_target, allow_ip).await;
        }
        OpenStream::Ping => wmproxy_tunnel::probe::answer(send).await,
        // Anything else the server may not ask of a client.
        _ => datastream::refuse(send, OpenResult::NotAllowed).await,
    }
}
