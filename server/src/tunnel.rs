//! One tunnel, from the QUIC handshake to its end: authenticate the Hello, register services,
//! then serve the control stream and the client's data streams until either side leaves.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tracing::{Instrument, Span, debug, info, info_span, warn};
use wmproxy_config::Limits;
use wmproxy_tunnel::dial::OwnAddresses;
use wmproxy_tunnel::stream::{StreamError, read_frame, write_frame};
use wmproxy_tunnel::transport::TransportTuning;
use wmproxy_tunnel::udp::FlowTable;
use wmproxy_tunnel::{Conn, RecvStream, SendStream};
use wmproxy_tunnel::{Side, Tunnel};
use wmproxy_wire::{ControlReply, ControlRequest, HelloReply, PROTOCOL_VERSION, RejectReason, ServiceSpec, close_code};

use crate::connect;
use crate::dashboard::events::EventKind;
use crate::handshake::{Arrival, Authenticated};
use crate::metrics::{Metrics, Refusal};
use crate::preauth::{PreAuth, Slot};
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::sessions::{Session, Sessions};
use crate::settings::ConfigCell;
use crate::udp::UdpBudget;
use crate::visit::Visits;

/// Why a tunnel ended abnormally. Logged; the peer sees only the close reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("QUIC handshake failed: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("TLS handshake on TCP failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP/2 over TLS on TCP failed: {0}")]
    Mux(#[from] wmproxy_tunnel::conn::tcp::MuxError),
    #[error("handshake or registration timed out")]
    Timeout,
    #[error("no correct proof within the authentication timeout")]
    AuthTimeout,
    #[error("closed to make room: too many connections waiting to authenticate")]
    Evicted,
    #[error("a QUIC datagram before authentication")]
    EarlyDatagram,
    #[error("control stream: {0}")]
    Control(#[from] StreamError),
    #[error("rejected: {0}")]
    Rejected(RejectReason),
    #[error("unexpected control message after registration")]
    Unexpected,
}

impl TunnelError {
    /// Whose fault it is: a rejection is the user's (the connecting peer), the rest the
    /// tunnel's.
    pub fn side(&self) -> Side {
        match self {
            Self::Rejected(_) => Side::User,
            _ => Side::Tunnel,
        }
    }

    /// The limit that refused the tunnel, if one did.
    fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Rejected(RejectReason::ServerFull) => Some(Refusal::ServerFull),
            Self::Rejected(RejectReason::NameInUse) => Some(Refusal::NameInUse),
            Self::Rejected(RejectReason::SharedTokenFull { .. }) => Some(Refusal::SharedTokenFull),
            Self::AuthTimeout => Some(Refusal::AuthTimeout),
            Self::Evicted => Some(Refusal::UnauthenticatedEvicted),
            Self::EarlyDatagram => Some(Refusal::EarlyDatagram),
            _ => None,
        }
    }

    /// Whether the peer closed or abandoned the connection during the QUIC handshake: what a
    /// restarting client or a scanner does, routine rather than a fault.
    fn abandoned(&self) -> bool {
        use quinn::ConnectionError as E;
        use std::io::ErrorKind as K;
        match self {
            Self::Quic(e) => matches!(e, E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::Reset | E::TimedOut),
            Self::Tls(e) => matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe),
            Self::Mux(e) => e.is_io(),
            _ => false,
        }
    }

    /// Counts a failed handshake in `metrics`: by the limit that refused it, as an auth
    /// failure, as abandoned by the peer, or as a failed handshake.
    fn count(&self, metrics: &Metrics) {
        let counter = match (self.refusal(), self) {
            (Some(refusal), _) => return metrics.refused(refusal),
            (None, Self::Rejected(reason)) => {
                metrics.events.record(EventKind::Refused, format!("a client was refused: {reason}"));
                &metrics.auth_failures
            }
            (None, e) if e.abandoned() => &metrics.handshakes_abandoned,
            (None, _) => &metrics.handshakes_failed,
        };
        counter.inc();
    }

    /// The QUIC close code a tunnel that ended so gets (`Rejected` sends its own first).
    pub fn close_code(&self) -> u32 {
        match self {
            Self::Rejected(_) => close_code::REJECTED,
            Self::Evicted => close_code::BUSY,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl From<tokio::time::error::Elapsed> for TunnelError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        Self::Timeout
    }
}

/// What the tunnels of the server use: the sessions (with the login throttle), the registry,
/// the running config, the metrics, the UDP budget and the runtime.
#[derive(Debug)]
pub(crate) struct Tunnels {
    pub sessions: Arc<Sessions>,
    pub registry: Arc<Registry>,
    pub config: Arc<ConfigCell>,
    pub metrics: Arc<Metrics>,
    pub udp: UdpBudget,
    pub runtime: Runtime,
    /// Settings that need a restart.
    pub limits: Limits,
    /// This machine's addresses, which the egress policy refuses by default.
    pub own_addresses: Arc<OwnAddresses>,
    /// Connections that have not authenticated yet.
    pub preauth: Arc<PreAuth>,
    /// One permit per authenticated tunnel: `max_clients`.
    pub clients: Arc<Semaphore>,
    /// The transport's full windows, which an authenticated tunnel is given.
    pub tuning: TransportTuning,
}

impl Tunnels {
    /// Serves one incoming connection, admitted with `slot`, to its end. Runs in its own task,
    /// under the span `tunnel{peer, client}`.
    pub async fn serve(self: Arc<Self>, arrival: Arrival, slot: Slot) {
        match self.run(arrival, slot).await {
            Ok(()) => info!("tunnel closed"),
            Err(TunnelError::Rejected(reason)) => warn!(%reason, "client rejected"),
            Err(e) if e.abandoned() => debug!(error = %e, "the peer left during the handshake"),
            Err(e) => warn!(error = %e, side = %e.side(), "tunnel ended"),
        }
    }

    async fn run(self: &Arc<Self>, arrival: Arrival, slot: Slot) -> Result<(), TunnelError> {
        let now = tokio::time::Instant::now();
        let (deadline, auth_deadline) = (now + self.limits.handshake_timeout(), now + self.limits.auth_timeout());
        // The handshake sees one config; registrations read the running one as they run.
        let config = self.config.snapshot();
        let handshake = tokio::time::timeout_at(deadline, self.handshake(arrival, slot, &config, auth_deadline)).await;
        let Authenticated { conn, session, replaced, control: (mut send, mut recv) } =
            handshake.map_err(TunnelError::from).and_then(|r| r).inspect_err(|e| e.count(&self.metrics))?;
        Span::current().record("client", session.name.as_str());
        let _counted = self.metrics.tunnel(conn.kind().as_str());
        if let Some(old) = replaced {
            self.retire(old).await;
        }
        info!("client authenticated");
        let (name, transport) = (&session.name, conn.kind().as_str());
        let from = conn.remote_address();
        self.metrics.events.record(EventKind::Connected, format!("{name} connected from {from} over {transport}"));
        let flows = session.tunnel.flows().clone().run(conn.clone(), self.limits.udp_flow_idle_timeout());
        self.runtime.tracker.spawn(flows.in_current_span());

        let served = async {
            let limits = self.limits.tunnel();
            let welcome = HelloReply::Welcome { protocol_version: PROTOCOL_VERSION, resume: session.resume, limits };
            write_frame(&mut send, &welcome).await?;
            let request = tokio::time::timeout_at(deadline, read_frame::<ControlRequest, _>(&mut recv)).await??;
            let ControlRequest::Register { services } = request else {
                return Err(TunnelError::Unexpected);
            };
            self.register(services, &mut send, &session).await?;
            tokio::select! {
                () = self.runtime.shutdown.cancelled() => {
                    self.drain(&session).await;
                    Ok(())
                }
                reason = conn.closed() => {
                    info!(%reason, "client disconnected");
                    Ok(())
                }
                result = self.control_loop((&mut send, &mut recv), &session) => result,
                () = self.accept_streams(&session) => Ok(()),
            }
        }
        .await;

        let (code, reason) = match &served {
            Ok(()) if self.runtime.shutdown.is_cancelled() => (close_code::NORMAL, "server shutting down".to_owned()),
            Ok(()) => (close_code::NORMAL, "server closing the tunnel".to_owned()),
            Err(e) => (close_code::PROTOCOL_ERROR, e.to_string()),
        };
        self.registry.end(&self.sessions, &session, code, &reason).await;
        drop(session.take_place());
        self.metrics.events.record(EventKind::Disconnected, format!("{} disconnected: {reason}", session.name));
        served
    }

    /// Retires `old`, the session this client's new tunnel replaces: its publications are
    /// withdrawn at once (the new tunnel registers them again), and its connections in flight,
    /// either way, get the drain grace on the old tunnel before it is closed. A client moving
    /// from the TCP transport back to QUIC loses nothing in flight; one that lost its network
    /// loses nothing more than before.
    async fn retire(self: &Arc<Self>, old: Arc<Session>) {
        let reason = "replaced by a newer connection of this client";
        let all = self.limits.max_streams_per_client;
        let in_flight = old.tunnel.streams_open(all) + (all as usize).saturating_sub(old.forwards.available_permits());
        if in_flight == 0 {
            // Nothing to wait for: ended at once, as before, so that a client reconnecting
            // again and again leaves no idle sessions behind.
            info!("replacing the previous session of this client");
            return self.registry.end(&self.sessions, &old, close_code::REPLACED, reason).await;
        }
        info!(
            in_flight,
            "replacing the previous session of this client; its connections in flight get the drain grace"
        );
        self.registry.withdraw_all(&old).await;
        let tunnels = self.clone();
        let retiring = async move {
            tunnels.drain(&old).await;
            tunnels.registry.end(&tunnels.sessions, &old, close_code::REPLACED, reason).await;
        };
        self.runtime.tracker.spawn(retiring.in_current_span());
    }

    /// Tunnels up now, and the connections through them either way (public connections to
    /// their services, their forwards and proxies): what a stop has to drain.
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        let all = self.limits.max_streams_per_client;
        let sessions = self.sessions.all();
        let open =
            |s: &Session| s.tunnel.streams_open(all) + (all as usize).saturating_sub(s.forwards.available_permits());
        (sessions.len(), sessions.iter().map(|s| open(s)).sum())
    }

    /// The handle of a new tunnel, with this server's per-client limits.
    pub(crate) fn tunnel(&self, conn: Conn) -> Arc<Tunnel> {
        let streams = Arc::new(Semaphore::new(self.limits.max_streams_per_client as usize));
        let flows = Arc::new(Semaphore::new(self.limits.max_udp_flows_per_client as usize));
        Arc::new(Tunnel::new(conn, FlowTable::new(self.udp.stats.clone()), streams, flows))
    }

    /// Publishes `services` (the whole set the client wants now) under the allowances of the
    /// running config, and answers with the results.
    async fn register(
        &self,
        services: Vec<ServiceSpec>,
        send: &mut SendStream,
        session: &Arc<Session>,
    ) -> Result<(), TunnelError> {
        let results = self.registry.register(session, services).await;
        write_frame(send, &ControlReply::Registered { results }).await?;
        Ok(())
    }

    /// After the first registration the client sends health reports, and a new `Register` when
    /// its config was reloaded; anything else, or the stream's end, ends the tunnel. Between
    /// requests, services a reload withdrew are announced (`Withdrawn`).
    async fn control_loop(
        &self,
        (send, recv): (&mut SendStream, &mut RecvStream),
        session: &Arc<Session>,
    ) -> Result<(), TunnelError> {
        // A stream keeps a half-read request while a notice is sent.
        let requests = futures_util::stream::unfold(recv, |recv| async move {
            let request = read_frame::<ControlRequest, _>(recv).await;
            Some((request, recv))
        });
        let mut requests = std::pin::pin!(requests);
        loop {
            let request = tokio::select! {
                Some(request) = requests.next() => request,
                results = session.withdrawals() => {
                    info!(services = results.len(), "telling the client which services a reload withdrew");
                    write_frame(send, &ControlReply::Withdrawn { results }).await?;
                    continue;
                }
            };
            match request {
                Ok(ControlRequest::Register { services }) => {
                    info!(services = services.len(), "client registers again (its config was reloaded)");
                    self.register(services, send, session).await?;
                }
                Ok(ControlRequest::Health { service, ok, latency_us }) => {
                    self.metrics.check_latency.observe(f64::from(latency_us) / 1e6);
                    match self.registry.backend(session.id, &service) {
                        Some(b) => {
                            if let Some(healthy) = b.report(ok, Duration::from_micros(u64::from(latency_us))) {
                                let state = if healthy { "healthy" } else { "unhealthy" };
                                let text = format!("{}:{service} is {state} (active check)", session.name);
                                self.metrics.events.record(EventKind::Health, text);
                            }
                        }
                        None => debug!(%service, "health report for a service in no group; ignored"),
                    }
                }
                Ok(_) => return Err(TunnelError::Unexpected),
                Err(StreamError::Closed) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Accepts the client's data streams (local forwards, TCP or UDP) until the connection
    /// ends. quinn's stream limit bounds how many are open at once; [`connect::serve`] applies
    /// the per-kind limits once the header says which kind a stream is.
    async fn accept_streams(&self, session: &Arc<Session>) {
        while let Ok(stream) = session.tunnel.conn().accept_bi().await {
            let span =
                info_span!("stream", id = %stream.0.id(), target = tracing::field::Empty, flow = tracing::field::Empty);
            let limits = (self.udp.clone(), self.own_addresses.clone());
            let config = self.config.snapshot();
            let visits = Visits {
                sessions: self.sessions.clone(),
                registry: self.registry.clone(),
                metrics: self.metrics.clone(),
                open_timeout: config.limits.stream_open_timeout(),
            };
            let serve = connect::serve(stream, session.clone(), config, limits, visits);
            self.runtime.tracker.spawn(serve.instrument(span));
        }
        debug!("no more streams from the client");
    }

    /// The server is stopping (its public ports stopped with the shutdown), or the session was
    /// replaced: waits, up to the grace period, until every connection through the tunnel,
    /// either way, has finished.
    async fn drain(&self, session: &Session) {
        let all = self.limits.max_streams_per_client;
        let finished = async {
            session.tunnel.streams_finished(all).await;
            let _forwards = session.forwards.acquire_many(all).await;
        };
        match tokio::time::timeout(self.limits.drain_grace(), finished).await {
            Ok(()) => info!("tunnel drained"),
            Err(_) => warn!("connections still open after the drain grace period; closing the tunnel"),
        }
    }
}
