//! Registering a client's services, and public TCP ports: binding them, accepting users, and
//! opening one data stream to the client per user. (Public UDP ports are in [`crate::udp`].)

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug, info, info_span, warn};
use wmproxy_config::PortAllowance;
use wmproxy_proto::datastream;
use wmproxy_proto::wire::{MAX_SERVICES, OpenStream, RegisterOutcome, ServiceKind, ServiceResult, ServiceSpec};

use crate::server::Shared;
use crate::sessions::Session;

/// Binds a public listener for each spec and starts serving it. One result per spec, in order;
/// a bad spec does not affect the others.
pub(crate) async fn register(
    specs: Vec<ServiceSpec>,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> Vec<ServiceResult> {
    let mut seen = HashSet::new();
    let mut results = Vec::with_capacity(specs.len().min(MAX_SERVICES));
    for (i, spec) in specs.into_iter().enumerate() {
        let outcome = if i >= MAX_SERVICES {
            RegisterOutcome::Invalid(format!("more than {MAX_SERVICES} services"))
        } else if let Err(e) = wmproxy_config::check_name(&spec.name) {
            RegisterOutcome::Invalid(e)
        } else if !seen.insert(spec.name.clone()) {
            RegisterOutcome::Invalid(format!("duplicate service name `{}`", spec.name))
        } else {
            match (&spec.group, spec.kind) {
                (Some(membership), _) => {
                    let (outcome, joined) = shared.groups.join(&spec, membership, session);
                    if let Some(joined) = joined {
                        session.memberships().insert(spec.name.clone(), joined);
                    }
                    outcome
                }
                (None, ServiceKind::Tcp) => bind_tcp(&spec, allowance, session, shared).await,
                (None, ServiceKind::Udp) => crate::udp::bind(&spec, allowance, session, shared),
                (None, ServiceKind::Http | ServiceKind::Https | ServiceKind::Ws) => match &spec.http {
                    Some(http) => {
                        let entry = shared.config.client(&session.name);
                        shared.router.register(&spec, http, session, entry, &shared.config.vhost)
                    }
                    None => RegisterOutcome::Invalid("an HTTP service needs its host names".into()),
                },
                _ => RegisterOutcome::Invalid("unsupported service type".into()),
            }
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

async fn bind_tcp(
    spec: &ServiceSpec,
    allowance: &PortAllowance,
    session: &Arc<Session>,
    shared: &Arc<Shared>,
) -> RegisterOutcome {
    let bound = bind_public(spec.remote_port, allowance, shared, crate::server::bind_tcp, TcpListener::local_addr);
    let (listener, bound) = match bound {
        Ok(pair) => pair,
        Err(refused) => return refused,
    };
    let span = info_span!("public", service = %spec.name, port = bound);
    session
        .listeners
        .spawn(accept_users(listener, spec.name.clone(), session.clone(), shared.clone()).instrument(span));
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
    let socket = match bind(SocketAddr::new(shared.config.public_bind, requested)) {
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

/// Accepts users until the session ends; then the listener is dropped and the port refuses.
async fn accept_users(listener: TcpListener, service: String, session: Arc<Session>, shared: Arc<Shared>) {
    while let Some((tcp, peer)) = wmproxy_proto::accept::next(&listener, &session.cancel).await {
        let Ok(permit) = session.streams.clone().try_acquire_owned() else {
            warn!(%peer, "stream limit of this client reached; closing the connection");
            continue;
        };
        let span = info_span!("stream", %peer);
        let task = expose(tcp, peer, service.clone(), session.clone(), shared.clone(), permit);
        shared.tracker.spawn(task.instrument(span));
    }
    debug!("public port closed");
}

/// Carries one user connection to the client.
async fn expose(
    tcp: TcpStream,
    peer: SocketAddr,
    service: String,
    session: Arc<Session>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let counted = shared.metrics.stream(&session.name, &service);
    let header = OpenStream::Expose { service, peer_addr: peer };
    let timeout = shared.config.limits.stream_open_timeout();
    match datastream::open_and_relay(&session.conn, &header, tcp, timeout).await {
        Ok(stats) => {
            counted.carried(&stats);
            debug!(up = stats.tcp_to_quic, down = stats.quic_to_tcp, "stream finished");
        }
        Err(e) => debug!(error = %e, "stream ended without data or aborted"),
    }
}
