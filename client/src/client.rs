//! The client: keeps one tunnel up, reconnecting with backoff, and serves its services and
//! forwards through whichever tunnel is current.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wmproxy_config::{ClientConfig, Service, ServiceType};
use wmproxy_proto::stream::read_frame;
use wmproxy_proto::transport;
use wmproxy_proto::udp::{FlowTable, UdpStats};
use wmproxy_proto::wire::{
    ControlReply, ControlRequest, PROTOCOL_VERSION, RegisterOutcome, RejectReason, ServiceResult, close_code,
};

use crate::backoff::{Backoff, Jitter};
use crate::error::ClientError;
use crate::expose::{self, ExposeContext};
use crate::forward::{self, Tunnel};
use crate::reload::Reloader;
use crate::session::{self, Session};
use crate::{health, proxy, tls};

/// How long shutdown waits for streams to finish.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the client is doing, published on a watch channel ([`Client::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStatus {
    /// Trying to (re)connect; `last_error` is why the previous attempt failed.
    Connecting {
        /// Attempts since the last working tunnel.
        attempt: u32,
        /// The previous attempt's error, if any.
        last_error: Option<String>,
    },
    /// The tunnel is up; one result per configured service.
    Connected {
        /// Per-service registration results.
        services: Vec<ServiceResult>,
    },
    /// `run` has returned; `error` is why, if it was not a requested shutdown.
    Stopped {
        /// The fatal error.
        error: Option<String>,
    },
}

impl ClientStatus {
    /// The public port of `service`, when connected and published.
    pub fn port_of(&self, service: &str) -> Option<u16> {
        let Self::Connected { services } = self else {
            return None;
        };
        services.iter().find(|s| s.name == service).and_then(|s| match s.outcome {
            RegisterOutcome::Ok { port } => Some(port),
            _ => None,
        })
    }
}

/// A bound local forward or proxy.
#[derive(Debug)]
enum ForwardListener {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Proxy(TcpListener, wmproxy_config::Proxy),
    /// Local TCP connections become WebSocket connections to a URL (directly, not through the
    /// tunnel).
    Ws(TcpListener),
}

impl ForwardListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(s) => s.local_addr(),
            Self::Proxy(l, _) | Self::Ws(l) => l.local_addr(),
        }
    }
}

/// A configured client with its forward listeners bound, ready to [`run`](Client::run).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    quic: quinn::ClientConfig,
    forwards: Vec<(ForwardListener, String)>,
    status: watch::Sender<ClientStatus>,
    protocol_version: u32,
    udp_stats: Arc<UdpStats>,
    reloader: Reloader,
    control_listener: Option<TcpListener>,
}

impl Client {
    /// Builds the TLS config and binds the local forward listeners. Must be called inside a
    /// tokio runtime.
    pub async fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let quic = tls::quic_client_config(&config.trust)?;
        let mut forwards = Vec::with_capacity(config.forwards.len());
        for f in &config.forwards {
            let listen_err = |source| ClientError::Listen { addr: f.listen, source };
            let listener = match f.kind {
                ServiceType::Ws => ForwardListener::Ws(TcpListener::bind(f.listen).await.map_err(listen_err)?),
                // Validation allows only "tcp", "udp" and "ws" forwards.
                ServiceType::Tcp | ServiceType::Http | ServiceType::Https => {
                    ForwardListener::Tcp(TcpListener::bind(f.listen).await.map_err(listen_err)?)
                }
                ServiceType::Udp => ForwardListener::Udp(
                    transport::bind_udp(f.listen).and_then(UdpSocket::from_std).map_err(listen_err)?,
                ),
            };
            forwards.push((listener, f.target.clone()));
        }
        for p in &config.proxies {
            let listener =
                TcpListener::bind(p.listen).await.map_err(|source| ClientError::Listen { addr: p.listen, source })?;
            forwards.push((ForwardListener::Proxy(listener, p.clone()), String::new()));
        }
        let control_listener = match &config.control {
            Some(control) => {
                let addr = control.addr(wmproxy_config::control::CLIENT_CONTROL_BIND);
                Some(TcpListener::bind(addr).await.map_err(|source| ClientError::Listen { addr, source })?)
            }
            None => None,
        };
        let (status, _) = watch::channel(ClientStatus::Connecting { attempt: 0, last_error: None });
        let udp_stats = Arc::default();
        let reloader = Reloader::new(&config, None);
        Ok(Self {
            config,
            quic,
            forwards,
            status,
            protocol_version: PROTOCOL_VERSION,
            udp_stats,
            reloader,
            control_listener,
        })
    }

    /// The config file this client was loaded from: `/reload`, SIGHUP and `/adapt` read it.
    pub fn set_config_path(&mut self, path: std::path::PathBuf) {
        self.reloader = Reloader::new(&self.config, Some(path));
    }

    /// Applies reloaded configs to this client while it runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Where the control API listens, if `[control]` is set.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The client's UDP counters (`active_flows` is the size of its flow table).
    pub fn udp_stats(&self) -> Arc<UdpStats> {
        self.udp_stats.clone()
    }

    /// Follows the client's state.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Where the local forwards listen, in config order, then the proxies.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.forwards.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    /// Announces another protocol version in the Hello. For tests of version mismatch only.
    #[doc(hidden)]
    pub fn override_protocol_version(&mut self, version: u32) {
        self.protocol_version = version;
    }

    /// Keeps the tunnel up until `shutdown`, or until an error that retrying cannot fix (wrong
    /// token, untrusted server, version mismatch), which it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ClientError> {
        let Self { config, quic, forwards, status, protocol_version, udp_stats, reloader, control_listener } = self;
        let tracker = TaskTracker::new();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        if let (Some(listener), Some(control)) = (control_listener, &config.control) {
            let api = crate::control::ClientControl {
                status: status.subscribe(),
                reloader: reloader.clone(),
                metrics: metrics.clone(),
                udp: udp_stats.clone(),
                stop: shutdown.clone(),
            };
            let token = control.token.expose().to_owned();
            let serve =
                wmproxy_proto::control::serve(listener, token, Arc::new(api), shutdown.clone(), tracker.clone());
            tracker.spawn(serve.instrument(info_span!("control_api")));
        }
        let (tunnel_tx, tunnel_rx) = watch::channel::<Option<Tunnel>>(None);
        let udp_permits = Arc::new(Semaphore::new(config.limits.max_udp_flows as usize));
        for (listener, target) in forwards {
            let span = info_span!("forward", listen = ?listener.local_addr().ok(), %target);
            let (rx, tasks, stop) = (tunnel_rx.clone(), tracker.clone(), shutdown.clone());
            match listener {
                ForwardListener::Tcp(l) => {
                    tracker.spawn(forward::serve_tcp(l, target, rx, tasks, stop).instrument(span))
                }
                ForwardListener::Udp(s) => {
                    let (permits, stats) = (udp_permits.clone(), udp_stats.clone());
                    tracker.spawn(forward::serve_udp(s, target, rx, permits, stats, tasks, stop).instrument(span))
                }
                ForwardListener::Proxy(l, p) => tracker.spawn(proxy::serve(l, p, rx, tasks, stop).instrument(span)),
                ForwardListener::Ws(l) => tracker.spawn(forward::serve_ws(l, target, tasks, stop).instrument(span)),
            };
        }
        let udp = UdpSetup {
            permits: udp_permits,
            stats: udp_stats,
            idle: config.limits.udp_flow_idle_timeout(),
            egress: Arc::new(config.egress.clone()),
            metrics,
        };

        let mut backoff = Backoff::default();
        let mut jitter = Jitter::default();
        let mut attempt = 0u32;
        let result = loop {
            let mut services = reloader.services();
            let wanted = services.borrow_and_update().clone();
            let established = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                r = session::establish(&config, &wanted, &quic, protocol_version) => r,
            };
            let wait = match established {
                Ok(session) => {
                    attempt = 0;
                    backoff.reset();
                    let span = info_span!("tunnel", server = %config.server_addr, client = %config.name);
                    let ended =
                        serve_session(session, (wanted, services), &udp, &status, &tunnel_tx, &tracker, &shutdown)
                            .instrument(span)
                            .await;
                    if shutdown.is_cancelled() {
                        break Ok(());
                    }
                    warn!(reason = %ended, "tunnel lost; reconnecting");
                    status.send_replace(ClientStatus::Connecting { attempt, last_error: Some(ended) });
                    backoff.next_delay(jitter.unit())
                }
                Err(e) if !e.is_retryable() => break Err(e),
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let mut delay = backoff.next_delay(jitter.unit());
                    if let ClientError::Rejected(RejectReason::Throttled { retry_after_secs }) = &e {
                        delay = delay.max(Duration::from_secs(u64::from(*retry_after_secs)));
                    }
                    warn!(error = %e, attempt, retry_in = ?delay, "cannot connect to the server");
                    status.send_replace(ClientStatus::Connecting { attempt, last_error: Some(e.to_string()) });
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        };

        if let Err(e) = &result {
            warn!(error = %e, "giving up");
        }
        status.send_replace(ClientStatus::Stopped { error: result.as_ref().err().map(ToString::to_string) });
        tracker.close();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
        result
    }
}

/// What every tunnel's streams and UDP flows share, and the per-service counters.
struct UdpSetup {
    permits: Arc<Semaphore>,
    stats: Arc<UdpStats>,
    idle: Duration,
    egress: Arc<wmproxy_config::EgressPolicy>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Serves one tunnel until it ends or `shutdown`. Returns why it ended. `services` is what the
/// tunnel registered with, and the watch a reload changes.
async fn serve_session(
    session: Session,
    (registered, services): (Arc<Vec<Service>>, watch::Receiver<Arc<Vec<Service>>>),
    udp: &UdpSetup,
    status: &watch::Sender<ClientStatus>,
    tunnel: &watch::Sender<Option<Tunnel>>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> String {
    let Session { endpoint, conn, services: results, control: (control_send, control_recv) } = session;
    log_results(&results);
    let flows = FlowTable::new(udp.stats.clone());
    tracker.spawn(flows.clone().run(conn.clone(), udp.idle).in_current_span());
    if conn.max_datagram_size().is_none() {
        warn!("the server does not accept QUIC datagrams: UDP packets will ride flow streams");
    }
    tunnel.send_replace(Some(Tunnel { conn: conn.clone(), flows: flows.clone() }));
    // Connected is announced only once forwards and proxies can use the tunnel: a caller that
    // waits for it may send through them at once.
    status.send_replace(ClientStatus::Connected { services: results });
    // Health reports and later registrations share the control stream; `requests` lives as
    // long as the session, so the stream stays open until the session ends.
    let (requests, queued) = mpsc::channel(health::REPORT_QUEUE);
    tracker.spawn(health::write_reports(control_send, queued).in_current_span());
    let mut checks = health::Checks::new(requests.clone(), tracker.clone(), shutdown.child_token());
    checks.sync(&registered);
    let ctx = ExposeContext {
        services: services.clone(),
        conn: conn.clone(),
        flows: flows.clone(),
        udp_permits: udp.permits.clone(),
        egress: udp.egress.clone(),
        metrics: udp.metrics.clone(),
    };
    info!("tunnel up");

    let ended = tokio::select! {
        () = shutdown.cancelled() => "client shutting down".to_owned(),
        reason = conn.closed() => reason.to_string(),
        // The accept error is the connection's end, with the server's close reason if it gave one.
        reason = async {
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        let span = info_span!(
                            "stream",
                            service = tracing::field::Empty,
                            peer = tracing::field::Empty,
                            flow = tracing::field::Empty
                        );
                        tracker.spawn(expose::serve(send, recv, ctx.clone()).instrument(span));
                    }
                    Err(e) => break e.to_string(),
                }
            }
        } => reason,
        reason = follow_reloads(services, (&requests, control_recv), status, &mut checks) => reason,
    };
    tunnel.send_replace(None);
    drop(checks);
    drop(requests);
    flows.close_all();
    let stats = conn.stats();
    info!(
        rtt = ?stats.path.rtt,
        mtu = stats.path.current_mtu,
        lost_packets = stats.path.lost_packets,
        congestion_events = stats.path.congestion_events,
        sent_bytes = stats.udp_tx.bytes,
        received_bytes = stats.udp_rx.bytes,
        "tunnel statistics"
    );
    conn.close(VarInt::from_u32(close_code::NORMAL), b"client closing the tunnel");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    ended
}

fn log_results(results: &[ServiceResult]) {
    for r in results {
        match &r.outcome {
            RegisterOutcome::Ok { port } => info!(service = %r.name, port, "service published"),
            RegisterOutcome::Joined { port } => info!(service = %r.name, port, "service joined its group"),
            refused => warn!(service = %r.name, reason = %refused, "service refused by the server"),
        }
    }
}

/// Registers the services again on the live tunnel each time a reload changes them (the
/// server keeps unchanged ones as they are), and makes the health checks follow. Returns only
/// when the control stream fails, with why.
async fn follow_reloads(
    mut services: watch::Receiver<Arc<Vec<Service>>>,
    (requests, mut replies): (&mpsc::Sender<ControlRequest>, quinn::RecvStream),
    status: &watch::Sender<ClientStatus>,
    checks: &mut health::Checks,
) -> String {
    loop {
        if services.changed().await.is_err() {
            // No reloader any more: nothing will change again.
            return std::future::pending().await;
        }
        let wanted = services.borrow_and_update().clone();
        info!(services = wanted.len(), "registering the reloaded services");
        if requests.send(ControlRequest::Register { services: session::specs(&wanted) }).await.is_err() {
            return "control stream closed".to_owned();
        }
        let results = match read_frame::<ControlReply, _>(&mut replies).await {
            Ok(ControlReply::Registered { results }) => results,
            Ok(_) => return "unexpected reply on the control stream".to_owned(),
            Err(e) => return format!("control stream: {e}"),
        };
        log_results(&results);
        status.send_replace(ClientStatus::Connected { services: results });
        checks.sync(&wanted);
    }
}
