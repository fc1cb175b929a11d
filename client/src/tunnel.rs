//! One established tunnel, served until it ends: it becomes the current tunnel (forwards and
//! proxies use it), the streams the server opens are served, health checks report on the
//! control stream, and reloaded services are registered again on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wmproxy_config::Service;
use wmproxy_tunnel::conn::TransportKind;
use wmproxy_tunnel::stream::{StreamError, read_frame};
use wmproxy_tunnel::udp::{FlowTable, UdpStats};
use wmproxy_tunnel::{Side, Tunnel};
use wmproxy_wire::{ControlReply, ControlRequest, RegisterOutcome, ServiceResult, close_code};

use crate::current::Installer;
use crate::error::TunnelError;
use crate::expose::{self, Exposer};
use crate::failback::Failback;
use crate::handshake::{self, Dialer, Established};
use crate::health;
use crate::quic_probe::QuicProbe;
use crate::roaming;
use crate::status::ClientStatus;

/// The server's replies on the control stream, read one at a time. It outlives a tunnel's
/// `serve` when the tunnel moves on (`retire`, `leave`): a dropped stream would stop the server's
/// replies and end its session, and the connections in flight with it.
type Replies = std::pin::Pin<Box<ReplyStream>>;
type ReplyStream = dyn futures_util::Stream<Item = Result<ControlReply, StreamError>> + Send;

/// How long a stop waits for the connections in flight to finish (and for the client's other
/// tasks after that).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a tunnel the client moved away from may serve the server's streams: beyond the
/// longest drain grace a server config may set (an hour), after which the server closes it.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(3_660);

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelEnd {
    /// The client is stopping.
    #[error("client shutting down")]
    Shutdown,
    /// The connection ended (with the server's close reason, if it gave one).
    #[error("{0}")]
    Lost(#[source] quinn::ConnectionError),
    /// The control stream failed while registering again.
    #[error("{0}")]
    Control(#[source] TunnelError),
    /// Failover mode: the server stopped answering pings (it died without closing, or the path
    /// to it broke), long before QUIC's idle timeout would say so.
    #[error("the server stopped answering ({SILENT_AFTER} pings in a row)")]
    Silent,
    /// Auto mode on the TCP transport: QUIC answers again, and the client moves to it. The
    /// TCP tunnel lives on for the connections in flight, until the server retires it.
    #[error("QUIC answers again: moving the tunnel back to it")]
    QuicBack,
    /// `mode = "failover"`: server `to`, earlier in the list, has answered for the hold. This
    /// tunnel keeps serving until `leave` is sent or dropped (once the tunnel to `to` is up, or
    /// has failed), then withdraws its services, lets its connections finish and closes.
    #[error("an earlier server of the list answers again: moving the tunnel back to it")]
    Failback {
        /// The index of the server to move to.
        to: usize,
        /// Tells this tunnel to leave.
        leave: oneshot::Sender<()>,
    },
}

impl TunnelEnd {
    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            Self::Shutdown | Self::QuicBack | Self::Failback { .. } => Side::Internal,
            Self::Lost(_) | Self::Control(_) | Self::Silent => Side::Tunnel,
        }
    }
}

/// What every tunnel of the client shares.
#[derive(Debug)]
pub(crate) struct TunnelSetup {
    /// The client's UDP flow limit, across tunnels.
    pub udp_flows: Arc<Semaphore>,
    /// Its UDP counters.
    pub udp_stats: Arc<UdpStats>,
    /// Idle UDP flows end after this.
    pub idle: Duration,
    /// Where the current tunnel is installed.
    pub installer: Installer,
    /// The client's state.
    pub status: watch::Sender<ClientStatus>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// In auto mode, how often a tunnel on the TCP transport asks QUIC again.
    pub quic_probe: Option<Duration>,
    /// In failover mode, how a tunnel to a later server learns that an earlier one is back.
    pub failback: Option<Failback>,
    /// The health checks' last results (the control API's status).
    pub checks: Arc<health::CheckResults>,
    /// This client's name (a private service's verifier is bound to it).
    pub client: wmproxy_wire::Name,
}

impl TunnelSetup {
    /// Serves `established` until it ends or the client stops; returns why it ended.
    /// `registered` is what it registered with, and `services` the watch a reload changes.
    /// `dialer` is how it was reached; in failover mode, `earlier` are the servers of the list
    /// it may move back to. `replaces` is the signal for the tunnel this one replaces to leave
    /// (failback), sent once this one is installed.
    pub async fn serve(
        &self,
        (established, dialer, earlier): (Established, &Dialer, Vec<usize>),
        replaces: Option<oneshot::Sender<()>>,
        (registered, services): (Arc<Vec<Service>>, watch::Receiver<Arc<Vec<Service>>>),
        exposer: Arc<Exposer>,
    ) -> TunnelEnd {
        let Established {
            server,
            endpoint,
            conn,
            services: results,
            control: (control_send, control_recv),
            limits,
            ..
        } = established;
        log_results(&results);
        // Connections of our forwards and proxies: as many as the server lets a client have, so
        // one past them is refused at once rather than left waiting for stream credit.
        let streams = Arc::new(Semaphore::new(limits.streams as usize));
        // The streams the server opens (users of our services), so a stop can wait for them.
        let exposed = TaskTracker::new();
        let flows = FlowTable::new(self.udp_stats.clone());
        let tunnel = Arc::new(Tunnel::new(conn.clone(), flows.clone(), streams, self.udp_flows.clone()));
        self.tracker.spawn(flows.clone().run(conn.clone(), self.idle).in_current_span());
        if !tunnel.carries_datagrams() {
            warn!("the server does not accept QUIC datagrams: UDP packets will ride flow streams");
        }
        self.installer.send_replace(Some(tunnel.clone()));
        drop(replaces);
        // Visitors' direct connections leave from this tunnel's socket, and visitors of our
        // private services connect to it.
        let direct_stop = self.shutdown.child_token();
        let _direct_stop = direct_stop.clone().drop_guard();
        if let Some(endpoint) = &endpoint {
            exposer.direct.install(endpoint, &tunnel);
            let accept = crate::direct::accept::run(endpoint.clone(), exposer.clone(), direct_stop);
            self.tracker.spawn(accept.in_current_span());
        }
        let _withdraw = endpoint.clone().map(|e| Withdraw(exposer.direct.clone(), e));
        // Connected is announced only once forwards and proxies can use the tunnel: a caller
        // that waits for it may send through them at once.
        let transport = conn.kind().as_str();
        self.status.send_replace(ClientStatus::Connected { services: results, transport, server });
        // Health reports and later registrations share the control stream; `requests` lives as
        // long as the tunnel, so the stream stays open until the tunnel ends.
        let (requests, queued) = mpsc::channel(health::REPORT_QUEUE);
        self.tracker.spawn(health::write_reports(control_send, queued).in_current_span());
        let to = (requests.clone(), self.checks.clone());
        let mut checks = health::Checks::new(to, self.tracker.clone(), self.shutdown.child_token());
        checks.sync(&registered);
        info!("tunnel up");

        let mut replies: Replies = Box::pin(futures_util::stream::unfold(control_recv, |mut recv| async move {
            let reply = read_frame::<ControlReply, _>(&mut recv).await;
            Some((reply, recv))
        }));
        let ended = tokio::select! {
            () = self.shutdown.cancelled() => TunnelEnd::Shutdown,
            reason = conn.closed() => TunnelEnd::Lost(reason),
            // The accept error is the connection's end, with the server's close reason if any.
            reason = accept_exposed(&tunnel, &exposer, (&self.tracker, &exposed)) => TunnelEnd::Lost(reason),
            () = async {
                match &self.failback {
                    Some(_) => silent(tunnel.conn()).await,
                    None => std::future::pending().await,
                }
            } => TunnelEnd::Silent,
            () = async {
                match (self.quic_probe, conn.kind()) {
                    (Some(interval), TransportKind::Tcp) => {
                        QuicProbe { dialer: dialer.clone(), interval }.answered().await
                    }
                    _ => std::future::pending().await,
                }
            } => TunnelEnd::QuicBack,
            to = async {
                match &self.failback {
                    Some(failback) => failback.due(&earlier).await,
                    None => std::future::pending().await,
                }
            } => {
                let (leave, go) = oneshot::channel();
                drop(checks);
                self.leave((tunnel, exposer, exposed), (requests, replies, limits.streams), go);
                return TunnelEnd::Failback { to, leave };
            }
            never = async {
                match &endpoint {
                    Some(endpoint) => roaming::follow(endpoint, exposer.metrics.rebinds()).await,
                    None => std::future::pending().await,
                }
            } => match never {},
            reason = follow_reloads((services, &self.client), (&requests, replies.as_mut()), &self.status, &mut checks) => {
                // The control stream fails with its connection: report the connection's reason
                // (the server's "shutting down", say), not the stream's.
                match conn.close_reason() {
                    Some(lost) => TunnelEnd::Lost(lost),
                    None => TunnelEnd::Control(reason),
                }
            }
        };
        if matches!(ended, TunnelEnd::QuicBack) {
            info!("QUIC answers again: moving the tunnel to it; connections in flight finish on TCP");
            drop(checks);
            self.retire((tunnel, exposer, exposed), (requests, replies));
            return ended;
        }
        if matches!(ended, TunnelEnd::Shutdown) {
            drain(&tunnel, (&exposed, limits.streams)).await;
        }
        self.installer.send_replace(None);
        drop(checks);
        drop(requests);
        if let Some(quic) = conn.quic() {
            let stats = quic.stats();
            info!(
                rtt = ?stats.path.rtt,
                mtu = stats.path.current_mtu,
                lost_packets = stats.path.lost_packets,
                congestion_events = stats.path.congestion_events,
                sent_bytes = stats.udp_tx.bytes,
                received_bytes = stats.udp_rx.bytes,
                "tunnel statistics"
            );
        }
        tunnel.close(close_code::NORMAL, "client closing the tunnel");
        match &endpoint {
            Some(endpoint) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            }
        }
        ended
    }
}

impl TunnelSetup {
    /// Keeps `tunnel` serving the streams the server opens on it until the server retires it
    /// (when the client's next tunnel has replaced it and its drain grace is over), at most
    /// [`RETIRE_TIMEOUT`]. `control` keeps its control stream open meanwhile: the end of that
    /// stream would end the session, and the connections in flight with it.
    fn retire(
        &self,
        (tunnel, exposer, exposed): (Arc<Tunnel>, Arc<Exposer>, TaskTracker),
        (control, mut replies): (mpsc::Sender<ControlRequest>, Replies),
    ) {
        let (tracker, shutdown) = (self.tracker.clone(), self.shutdown.clone());
        let retiring = async move {
            let served = async {
                accept_exposed(&tunnel, &exposer, (&tracker, &exposed)).await;
            };
            tokio::select! {
                () = let_go(&mut replies) => {}
                served = tokio::time::timeout(RETIRE_TIMEOUT, served) => if served.is_err() {
                    warn!("the server kept the previous tunnel open too long; closing it");
                },
                // The client's stop drains its current tunnel; this one just closes.
                () = shutdown.cancelled() => {}
            }
            drop(control);
            exposed.close();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, exposed.wait()).await;
            tunnel.close(close_code::NORMAL, "client moved to another tunnel");
            info!("previous tunnel retired");
        };
        self.tracker.spawn(retiring.in_current_span());
    }
}

impl TunnelSetup {
    /// Keeps `tunnel` serving until `go` (its successor is up, or failed) and then leaves its
    /// server: withdraws every service (an empty registration), waits up to [`DRAIN_TIMEOUT`]
    /// for the connections in flight either way, and closes.
    fn leave(
        &self,
        (tunnel, exposer, exposed): (Arc<Tunnel>, Arc<Exposer>, TaskTracker),
        (control, mut replies, streams): (mpsc::Sender<ControlRequest>, Replies, u32),
        go: oneshot::Receiver<()>,
    ) {
        let (tracker, shutdown) = (self.tracker.clone(), self.shutdown.clone());
        let leaving = async move {
            let served = async {
                accept_exposed(&tunnel, &exposer, (&tracker, &exposed)).await;
            };
            let left = async {
                let _ = go.await;
                info!("leaving this server: withdrawing the services, then closing once connections finish");
                let _ = control.send(ControlRequest::Register { services: Vec::new() }).await;
                exposed.close();
                let finished = async {
                    exposed.wait().await;
                    tunnel.streams_finished(streams).await;
                };
                if tokio::time::timeout(DRAIN_TIMEOUT, finished).await.is_err() {
                    warn!("connections still open after the drain time; closing the tunnel");
                }
            };
            tokio::select! {
                () = let_go(&mut replies) => {}
                () = served => {}
                () = left => {}
                () = shutdown.cancelled() => {}
            }
            drop(control);
            tunnel.close(close_code::NORMAL, "client moved back to a preferred server");
            info!("left the server");
        };
        self.tracker.spawn(leaving.in_current_span());
    }
}

/// Serves the streams the server opens on `tunnel` (users of the client's services), each in a
/// task of `tracker` tracked in `exposed` (a stop or a move waits for them), until the
/// connection ends; returns why it ended.
async fn accept_exposed(
    tunnel: &Arc<Tunnel>,
    exposer: &Arc<Exposer>,
    (tracker, exposed): (&TaskTracker, &TaskTracker),
) -> quinn::ConnectionError {
    loop {
        match tunnel.conn().accept_bi().await {
            Ok(stream) => {
                let span = info_span!(
                    "stream",
                    service = tracing::field::Empty,
                    peer = tracing::field::Empty,
                    flow = tracing::field::Empty
                );
                let serve = expose::serve(stream, tunnel.clone(), exposer.clone()).instrument(span);
                tracker.spawn(exposed.track_future(serve));
            }
            Err(e) => return e,
        }
    }
}

/// Failover mode pings its tunnel this often, so that a server that died without closing is
/// left within a few seconds (the next server may be serving within 3 s); a ping costs a
/// stream and a few packets.
const PING_EVERY: Duration = Duration::from_millis(250);
/// How long a ping may take: four round trips (a loaded path queues), within these bounds.
const PING_WITHIN: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(2));
/// Unanswered pings in a row that count as the server gone.
const SILENT_AFTER: u32 = 2;

/// Completes once the server has left [`SILENT_AFTER`] pings in a row unanswered.
async fn silent(conn: &wmproxy_tunnel::Conn) {
    let mut missed = 0;
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let within = (conn.rtt() * 4).clamp(PING_WITHIN.0, PING_WITHIN.1);
        if wmproxy_tunnel::probe::probe(conn, within).await {
            missed = 0;
        } else {
            missed += 1;
            if missed >= SILENT_AFTER {
                return;
            }
        }
    }
}

/// Reads the server's replies on a tunnel that is moving on (an answer to the withdrawal, a
/// notice of withdrawn services) and lets them go; never completes.
async fn let_go(replies: &mut Replies) {
    while let Some(Ok(_)) = replies.next().await {}
    std::future::pending::<()>().await
}

/// The client is stopping (its forwards and proxies stopped accepting with the shutdown): waits,
/// up to [`DRAIN_TIMEOUT`], until every connection through the tunnel, either way, has
/// finished and its last bytes are acknowledged, as the server's drain does.
/// `streams` is the tunnel's stream permits, all of which are back once no local connection is.
async fn drain(tunnel: &Tunnel, (exposed, streams): (&TaskTracker, u32)) {
    exposed.close();
    let connections = exposed.len() + tunnel.streams_open(streams);
    info!(
        connections,
        grace_secs = DRAIN_TIMEOUT.as_secs(),
        "stopping: connections in flight get the drain time (a second signal stops at once)"
    );
    let finished = async {
        exposed.wait().await;
        tunnel.streams_finished(streams).await;
    };
    match tokio::time::timeout(DRAIN_TIMEOUT, finished).await {
        Ok(()) => info!("tunnel drained"),
        Err(_) => warn!("connections still open after the drain time; closing the tunnel"),
    }
}

fn log_results(results: &[ServiceResult]) {
    for r in results {
        match &r.outcome {
            RegisterOutcome::Ok { port } => info!(service = %r.name, port, "service published"),
            RegisterOutcome::Joined { port } => info!(service = %r.name, port, "service joined its group"),
            RegisterOutcome::Private => info!(service = %r.name, "private service published (visitors only)"),
            refused => warn!(service = %r.name, reason = %refused, "service refused by the server"),
        }
    }
}

/// Registers the services again on the live tunnel each time a reload changes them (the
/// server keeps unchanged ones as they are), and makes the health checks follow; takes in the
/// services the server withdraws when its own config narrows. Returns only when the control
/// stream fails, with why.
async fn follow_reloads(
    (mut services, client): (watch::Receiver<Arc<Vec<Service>>>, &wmproxy_wire::Name),
    (requests, mut replies): (&mpsc::Sender<ControlRequest>, std::pin::Pin<&mut ReplyStream>),
    status: &watch::Sender<ClientStatus>,
    checks: &mut health::Checks,
) -> TunnelError {
    // The services of each `Register` not answered yet, in order (one per reload in flight).
    let mut asked: VecDeque<Arc<Vec<Service>>> = VecDeque::new();
    let mut reloads = true;
    loop {
        tokio::select! {
            changed = services.changed(), if reloads => {
                if changed.is_err() {
                    // No reloader any more: nothing will change again.
                    reloads = false;
                    continue;
                }
                let wanted = services.borrow_and_update().clone();
                info!(services = wanted.len(), "registering the reloaded services");
                if requests.send(ControlRequest::Register { services: handshake::specs(&wanted, client) }).await.is_err() {
                    return TunnelError::Control(wmproxy_tunnel::stream::StreamError::Closed);
                }
                asked.push_back(wanted);
            }
            Some(reply) = replies.next() => match reply {
                Ok(ControlReply::Registered { results }) => {
                    let Some(wanted) = asked.pop_front() else {
                        return TunnelError::UnexpectedReply;
                    };
                    log_results(&results);
                    // Connected since the tunnel came up: only the results change.
                    status.send_modify(|now| {
                        if let ClientStatus::Connected { services, .. } = now {
                            *services = results;
                        }
                    });
                    checks.sync(&wanted);
                }
                Ok(ControlReply::Withdrawn { results }) => withdrawn(status, results),
                Ok(_) => return TunnelError::UnexpectedReply,
                Err(e) => return TunnelError::Control(e),
            },
        }
    }
}

/// The server took `results` back (a reload of its config no longer allows them): logged, and
/// shown in the status with why.
fn withdrawn(status: &watch::Sender<ClientStatus>, results: Vec<ServiceResult>) {
    for r in &results {
        warn!(service = %r.name, reason = %r.outcome, "the server withdrew this service (its config changed)");
    }
    status.send_modify(|now| {
        if let ClientStatus::Connected { services, .. } = now {
            for r in results {
                if let Some(service) = services.iter_mut().find(|s| s.name == r.name) {
                    service.outcome = r.outcome;
                }
            }
        }
    });
}

/// Takes a tunnel's endpoint back from direct connections when the tunnel ends (dropped).
struct Withdraw(Arc<crate::direct::Direct>, quinn::Endpoint);

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.0.withdraw(&self.1);
    }
}
