//! Registering a client's services, and public TCP ports: binding them, accepting users, and
//! opening one data stream to the client per user. (Public UDP ports are in [`crate::udp`].)
//!
//! A client may register again on a live tunnel (its config was reloaded): a service whose spec
//! did not change keeps its port and its connections; a removed or changed one is withdrawn
//! (its port closes at once, its live connections get the drain grace period); a new one is
//! published.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use wmproxy_config::PortAllowance;
use wmproxy_proto::datastream;
use wmproxy_proto::wire::{MAX_SERVICES, OpenStream, RegisterOutcome, ServiceKind, ServiceResult, ServiceSpec};

use crate::server::Shared;
use crate::sessions::Session;

/// A service a session publishes now: what was asked, what it got, and the token that stops it
/// (a child of the session's).
#[derive(Debug)]
pub(crate) struct Published {
    spec: ServiceSpec,
    outcome: RegisterOutcome,
    stop: ServiceStop,
}

/// What stops one published service: its token (a child of the session's), and the tracker of
/// its listener task, so that a withdrawal can wait until the port is really closed (a changed
/// service may bind the same port again at once).
#[derive(Debug, Clone)]
pub(crate) struct ServiceStop {
    pub token: CancellationToken,
    pub listener: TaskTracker,
}

/// How long a withdrawal waits for a listener task to drop its socket.
const LISTENER_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Makes `specs` the session's published services. One result per spec, in order; a bad spec
/// does not affect the others. Services published by an earlier registration with the same
/// spec are kept as they are; the others are withdrawn first, so a changed service can take
/// its port again.
pub(crate) async fn register(
    specs: Vec<ServiceSpec>,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> Vec<ServiceResult> {
    let mut wanted: HashMap<&str, &ServiceSpec> = HashMap::new();
    for spec in specs.iter().take(MAX_SERVICES) {
        wanted.entry(spec.name.as_str()).or_insert(spec);
    }
    let stale: Vec<String> = session
        .published()
        .iter()
        .filter(|(name, p)| wanted.get(name.as_str()) != Some(&&p.spec))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        withdraw(&name, session, shared).await;
    }
    let mut seen = HashSet::new();
    let mut results = Vec::with_capacity(specs.len().min(MAX_SERVICES));
    for (i, spec) in specs.into_iter().enumerate() {
        let outcome = if i >= MAX_SERVICES {
            RegisterOutcome::Invalid(format!("more than {MAX_SERVICES} services"))
        } else if let Err(e) = wmproxy_config::check_name(&spec.name) {
            RegisterOutcome::Invalid(e)
        } else if !seen.insert(spec.name.clone()) {
            RegisterOutcome::Invalid(format!("duplicate service name `{}`", spec.name))
        } else if let Some(kept) = session.published().get(&spec.name).map(|p| p.outcome.clone()) {
            debug!(service = %spec.name, "service unchanged; kept");
            results.push(ServiceResult { name: spec.name, outcome: kept });
            continue;
        } else {
            publish(&spec, allowance, session, shared).await
        };
        match &outcome {
            RegisterOutcome::Ok { port } => info!(service = %spec.name, port, "service published"),
            RegisterOutcome::Joined { port } => info!(service = %spec.name, port, "service joined its group"),
            refused => {
                warn!(service = %spec.name, port = spec.remote_port, reason = %refused, "service refused")
            }
        }
        results.push(ServiceResult { name: spec.name, outcome });
    }
    results
}

/// Publishes one service under a new stop token; remembers it if that worked.
async fn publish(
    spec: &ServiceSpec,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> RegisterOutcome {
    let stop = ServiceStop { token: session.cancel.child_token(), listener: TaskTracker::new() };
    let outcome = match (&spec.group, spec.kind) {
        (Some(membership), _) => {
            let (outcome, joined) = shared.groups.join(spec, membership, session);
            if let Some(joined) = joined {
                session.memberships().insert(spec.name.clone(), joined);
            }
            outcome
        }
        (None, ServiceKind::Tcp) => bind_tcp(spec, allowance, session, shared, stop.clone()),
        (None, ServiceKind::Udp) => crate::udp::bind(spec, allowance, session, shared, stop.clone()),
        (None, ServiceKind::Http | ServiceKind::Https | ServiceKind::Ws) => match &spec.http {
            Some(http) => {
                let config = shared.config();
                let entry = config.client(&session.name);
                shared.router.register(spec, http, session, entry, &config.vhost)
            }
            None => RegisterOutcome::Invalid("an HTTP service needs its host names".into()),
        },
        _ => RegisterOutcome::Invalid("unsupported service type".into()),
    };
    if matches!(outcome, RegisterOutcome::Ok { .. } | RegisterOutcome::Joined { .. }) {
        let published = Published { spec: spec.clone(), outcome: outcome.clone(), stop };
        session.published().insert(spec.name.clone(), published);
    }
    outcome
}

/// Takes a service off the session: its port closes now (live connections get the grace
/// period), its routes and its group membership go at once.
async fn withdraw(name: &str, session: &Session, shared: &Shared) {
    let published = session.published().remove(name);
    if let Some(published) = published {
        published.stop.token.cancel();
        published.stop.listener.close();
        if tokio::time::timeout(LISTENER_CLOSE_TIMEOUT, published.stop.listener.wait()).await.is_err() {
            warn!(service = %name, "the withdrawn service's listener is slow to close");
        }
    }
    let membership = session.memberships().remove(name);
    if let Some(membership) = membership {
        crate::groups::leave(std::slice::from_ref(&membership));
    }
    shared.router.remove_service(session.id, name);
    info!(service = %name, "service withdrawn");
}

fn bind_tcp(
    spec: &ServiceSpec,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
    stop: ServiceStop,
) -> RegisterOutcome {
    let bound = bind_public(spec.remote_port, allowance, shared, crate::server::bind_tcp, TcpListener::local_addr);
    let (listener, bound) = match bound {
        Ok(pair) => pair,
        Err(refused) => return refused,
    };
    let span = info_span!("public", service = %spec.name, port = bound);
    let serve = accept_users(listener, spec.name.clone(), session.clone(), shared.clone(), stop.token);
    session.listeners.spawn(stop.listener.track_future(serve.instrument(span)));
    RegisterOutcome::Ok { port: bound }
}

/// Binds a public port for a service: the requested port (0: any) must be in `allowance`, and
/// so must the port actually bound. A refusal is the registration's answer.
pub(crate) fn bind_public<S>(
    requested: u16,
    allowance: &PortAllowance,
    shared: &Shared,
    bind: impl FnOnce(SocketAddr) -> io::Result<S>,
    local_addr: impl FnOnce(&S) -> io::Result<SocketAddr>,
) -> Result<(S, u16), RegisterOutcome> {
    if requested != 0 && !allowance.allows(requested) {
        return Err(RegisterOutcome::PortNotAllowed);
    }
    let socket = match bind(SocketAddr::new(shared.config().public_bind, requested)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(RegisterOutcome::PortInUse),
        Err(e) => return Err(RegisterOutcome::Invalid(format!("cannot bind: {e}"))),
    };
    let bound = local_addr(&socket).map_err(|_| RegisterOutcome::Invalid("cannot read the bound port".into()))?.port();
    if !allowance.allows(bound) {
        // Port 0 let the system pick a port outside this client's allowance.
        return Err(RegisterOutcome::PortNotAllowed);
    }
    Ok((socket, bound))
}

/// Accepts users until the service is withdrawn or the session ends; then the listener is
/// dropped and the port refuses.
async fn accept_users(
    listener: TcpListener,
    service: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &stop).await {
        let Ok(permit) = session.streams.clone().try_acquire_owned() else {
            warn!(%peer, "stream limit of this client reached; closing the connection");
            continue;
        };
        let span = info_span!("stream", %peer);
        let task = expose(tcp, peer, service.clone(), session.clone(), shared.clone(), (permit, stop.clone()));
        shared.tracker.spawn(task.instrument(span));
    }
    debug!("public port closed");
}

/// Carries one user connection to the client. Once the service is withdrawn (`stop`), the
/// connection gets the drain grace period, then is closed.
async fn expose(
    tcp: TcpStream,
    peer: SocketAddr,
    service: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
    (_permit, stop): (OwnedSemaphorePermit, CancellationToken),
) {
    let counted = shared.metrics.stream(&session.name, &service);
    let header = OpenStream::Expose { service, peer_addr: peer };
    let limits = shared.config().limits.clone();
    let relay = datastream::open_and_relay(&session.conn, &header, tcp, limits.stream_open_timeout());
    tokio::select! {
        relayed = relay => match relayed {
            Ok(stats) => {
                counted.carried(&stats);
                debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished");
            }
            Err(e) => debug!(error = %e, "stream ended without data or aborted"),
        },
        () = wmproxy_proto::shutdown::after_grace(&stop, limits.drain_grace()) => {
            debug!("service withdrawn and the grace period is over; connection closed");
        }
    }
}
