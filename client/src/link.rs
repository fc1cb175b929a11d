//! One reconnect loop: keeps a tunnel up, with backoff, and serves each tunnel until it ends.
//! With `mode = "all"` the client runs one loop per server; with `"failover"` one loop for the
//! whole list, which goes to the next server when its tunnel is lost or its server refuses it,
//! and back to an earlier one when that has answered for the hold (`failback`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{Instrument, info_span, warn};
use wmproxy_config::{ClientConfig, Transport};
use wmproxy_tunnel::conn::TransportKind;
use wmproxy_wire::{RejectReason, ResumeSecret};

use crate::backoff::{Backoff, Jitter};
use crate::error::ClientError;
use crate::expose::Exposer;
use crate::handshake::{self, Dialer};
use crate::reload::Reloader;
use crate::status::ClientStatus;
use crate::tunnel::{TunnelEnd, TunnelSetup};

/// What every loop of the client shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub config: Arc<ClientConfig>,
    pub reloader: Reloader,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub own_addresses: Arc<wmproxy_tunnel::dial::OwnAddresses>,
    pub protocol_version: u32,
    /// Direct connections to and from other clients (private services).
    pub direct: Arc<crate::direct::Direct>,
}

/// One reconnect loop.
#[derive(Debug)]
pub(crate) struct Link {
    /// The servers it may use, in order: one, or the whole list in failover mode.
    pub dialers: Arc<Vec<Dialer>>,
    /// Its slot, status, and what every tunnel of the client shares.
    pub setup: TunnelSetup,
}

/// Where a failover loop stands in its list.
#[derive(Debug)]
struct Place {
    /// The server the next attempt goes to.
    at: usize,
    /// Attempts that failed since the last tunnel was up, or since the last wait.
    failed: usize,
    /// Servers that refused the client for good (a wrong token, an untrusted certificate),
    /// with why.
    refused: Vec<Option<ClientError>>,
}

impl Place {
    /// The next server after `at` not refused for good, if any is left.
    fn next(&mut self) -> Option<usize> {
        let n = self.refused.len();
        let next = (1..=n).map(|step| (self.at + step) % n).find(|i| self.refused[*i].is_none())?;
        self.at = next;
        Some(next)
    }
}

impl Link {
    /// Keeps a tunnel up until the client stops, or until every server it may use refused it
    /// for good (a wrong token, an untrusted server, a version mismatch): then returns why.
    pub async fn run(self, shared: Shared) -> Result<(), ClientError> {
        let Self { dialers, setup } = self;
        let (config, shutdown) = (&shared.config, setup.shutdown.clone());
        let mut backoff = Backoff::default();
        let mut jitter = Jitter::default();
        let mut attempt = 0u32;
        let mut place = Place { at: 0, failed: 0, refused: (0..dialers.len()).map(|_| None).collect() };
        // The secret of our last session on each server: it lets that server replace the
        // session at once.
        let mut resume: Vec<Option<ResumeSecret>> = vec![None; dialers.len()];
        // The transport of the next attempt when it is not the configured one.
        let mut next_transport = None;
        // A tunnel moving over to this attempt's, which leaves its server once this is done.
        let mut leaving: Option<oneshot::Sender<()>> = None;
        loop {
            let dialer = &dialers[place.at];
            let mut services = shared.reloader.services();
            let wanted = services.borrow_and_update().clone();
            let transport = next_transport.take().unwrap_or(config.transport);
            let established = tokio::select! {
                () = shutdown.cancelled() => break,
                r = handshake::establish(
                    config,
                    &wanted,
                    (dialer, transport),
                    (shared.protocol_version, resume[place.at]),
                ) => r,
            };
            let wait = match established {
                Ok(established) => {
                    resume[place.at] = Some(established.resume);
                    (attempt, place.failed) = (0, 0);
                    backoff.reset();
                    let transport = established.conn.kind();
                    let span = info_span!("tunnel", server = %dialer.server.addr, client = %config.name, %transport);
                    let exposer = Arc::new(Exposer {
                        services: services.clone(),
                        egress: config.server_proxies_egress.clone(),
                        own_addresses: shared.own_addresses.clone(),
                        metrics: shared.metrics.clone(),
                        bandwidths: Default::default(),
                        direct: shared.direct.clone(),
                        client: config.name.clone(),
                        tracker: setup.tracker.clone(),
                        endpoint: established.endpoint.clone(),
                    });
                    let earlier = (0..place.at).filter(|i| place.refused[*i].is_none()).collect();
                    let serving =
                        setup.serve((established, dialer, earlier), leaving.take(), (wanted, services), exposer);
                    let ended = serving.instrument(span).await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    match ended {
                        TunnelEnd::QuicBack => {
                            // At once, over QUIC; the TCP tunnel serves what is in flight meanwhile.
                            next_transport = Some(Transport::Quic);
                            continue;
                        }
                        TunnelEnd::Failback { to, leave } => {
                            place.at = to;
                            leaving = Some(leave);
                            continue;
                        }
                        _ => {}
                    }
                    if config.transport == Transport::Auto && transport == TransportKind::Tcp {
                        // UDP was blocked a moment ago: the next attempt goes over TCP at once
                        // rather than waiting out QUIC again (its probe moves it back when UDP
                        // gets through; an attempt after a failed one starts with QUIC again).
                        next_transport = Some(Transport::Tcp);
                    }
                    warn!(server = %dialer.server.addr, reason = %ended, side = %ended.side(), "tunnel lost; reconnecting");
                    setup.status.send_replace(ClientStatus::Connecting {
                        attempt,
                        last_error: Some(format!("{}: {ended}", dialer.server.addr)),
                    });
                    if dialers.len() > 1 {
                        // Failover: the next server at once (its own probe brings the tunnel
                        // back here when this one answers again).
                        next_transport = None;
                        place.next();
                        continue;
                    }
                    backoff.next_delay(jitter.unit())
                }
                Err(e) => {
                    drop(leaving.take());
                    let server = dialer.server.addr.clone();
                    if !e.is_retryable() {
                        warn!(%server, error = %e, "this server refuses the client; not trying it again");
                        setup.status.send_replace(ClientStatus::Connecting {
                            attempt,
                            last_error: Some(format!("{server}: {e}")),
                        });
                        let refused_at = place.at;
                        place.refused[refused_at] = Some(e);
                        if place.next().is_none() {
                            let e = place.refused[refused_at].take().unwrap_or(ClientError::Timeout);
                            setup.status.send_replace(ClientStatus::Stopped { error: Some(format!("{server}: {e}")) });
                            warn!(%server, error = %e, "giving up");
                            return Err(e);
                        }
                        continue;
                    }
                    attempt = attempt.saturating_add(1);
                    setup
                        .status
                        .send_replace(ClientStatus::Connecting { attempt, last_error: Some(format!("{server}: {e}")) });
                    place.failed += 1;
                    place.next();
                    let usable = place.refused.iter().filter(|r| r.is_none()).count();
                    if place.failed < usable {
                        // Failover: the rest of the round first, at once.
                        warn!(%server, error = %e, side = %e.side(), attempt, "cannot connect to the server; trying the next");
                        continue;
                    }
                    place.failed = 0;
                    let mut delay = backoff.next_delay(jitter.unit());
                    let answered = match &e {
                        ClientError::NeitherTransport { tcp, .. } => tcp.as_ref(),
                        other => other,
                    };
                    if let ClientError::Rejected(RejectReason::Throttled { retry_after_secs }) = answered {
                        delay = delay.max(Duration::from_secs(u64::from(*retry_after_secs)));
                    }
                    warn!(%server, error = %e, side = %e.side(), attempt, retry_in = ?delay, "cannot connect to the server");
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        drop(leaving);
        setup.status.send_replace(ClientStatus::Stopped { error: None });
        Ok(())
    }
}
