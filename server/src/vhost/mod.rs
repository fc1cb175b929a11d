//! HTTP virtual hosts: the routes HTTP services registered and HTTP groups declare (a host
//! name and path prefix lead to a client's service, or to a group's backends), and the vhost
//! port that routes every request by its own `Host`.
//!
//! - this module: the [`Router`] table, registration checks (the client's `allow_domains`,
//!   routes another session or a group holds), lookup (an exact host beats a wildcard, a
//!   longer wildcard suffix beats a shorter one, then the longest path prefix wins) and
//!   opening a data stream to a route's target.
//! - `serve`: the port itself (hyper), forwarding each request over its own data stream.
//! - `sni`: the HTTPS port: reads the TLS ClientHello (rustls's `Acceptor`), routes by its SNI
//!   and passes every byte through, or, with `[vhost.tls]`, terminates TLS and serves the
//!   requests like the vhost port.

mod serve;
mod sni;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;
use wmproxy_config::{ClientEntry, GroupFile, ServiceType, VhostFile};
use wmproxy_proto::datastream;
use wmproxy_proto::proxy::http::basic_authorization;
use wmproxy_proto::wire::{HttpSpec, OpenStream, RegisterOutcome, ServiceKind, ServiceSpec};

pub(crate) use self::serve::serve;
pub(crate) use self::sni::serve as serve_tls;
use crate::groups::{ActiveGuard, Group};
use crate::sessions::Session;

/// What serves a route.
#[derive(Debug)]
pub(crate) enum Target {
    /// One client's service.
    Service { session_id: u64, client: String, conn: quinn::Connection, streams: Arc<Semaphore>, service: String },
    /// A load-balancing group's backends (the route comes from the server's config).
    Group(Arc<Group>),
}

/// Why no data stream was opened for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The client is at its stream limit (`503`).
    Busy,
    /// A group with no eligible backend (`503`).
    NoBackend,
    /// The client or every backend tried failed to reach the service (`502`).
    Unreachable,
}

/// A data stream to the service behind a route, and the permits it holds while it lives.
#[derive(Debug)]
pub(crate) struct Opened {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub hold: (OwnedSemaphorePermit, Option<ActiveGuard>),
    /// The client and service that took it (for the metrics).
    pub served_by: (String, String),
}

/// One host name + path prefix served by a client's service.
#[derive(Debug)]
pub(crate) struct Route {
    /// `example.com` or `*.example.com`, lower-case.
    host: String,
    /// A path prefix starting with `/`.
    location: String,
    /// Served on the HTTPS (SNI) port rather than the HTTP one.
    tls: bool,
    /// A `ws` service: the server accepts the WebSocket and bridges it to a TCP stream.
    pub bridge: bool,
    target: Target,
    pub host_rewrite: Option<String>,
    /// The `Authorization` value a request must carry (`Basic …`), if the service requires it.
    pub authorization: Option<String>,
}

impl Route {
    /// Opens a data stream for one connection of `peer` to the service behind this route.
    pub async fn open(&self, peer: SocketAddr, timeout: Duration) -> Result<Opened, OpenError> {
        match &self.target {
            Target::Service { client, conn, streams, service, .. } => {
                let permit = streams.clone().try_acquire_owned().map_err(|_| OpenError::Busy)?;
                let header = OpenStream::Expose { service: service.clone(), peer_addr: peer };
                match datastream::open_confirmed(conn, &header, timeout).await {
                    Ok((send, recv)) => {
                        Ok(Opened { send, recv, hold: (permit, None), served_by: (client.clone(), service.clone()) })
                    }
                    Err(e) => {
                        debug!(error = %e, "service not reached");
                        Err(OpenError::Unreachable)
                    }
                }
            }
            Target::Group(group) => match group.open(peer, timeout).await {
                Ok(b) => Ok(Opened {
                    served_by: (b.backend.client.clone(), b.backend.service.clone()),
                    send: b.send,
                    recv: b.recv,
                    hold: (b.hold.0, Some(b.hold.1)),
                }),
                Err(0) => Err(OpenError::NoBackend),
                Err(_) => Err(OpenError::Unreachable),
            },
        }
    }

    fn owned_by(&self, session_id: u64) -> bool {
        matches!(self.target, Target::Service { session_id: id, .. } if id == session_id)
    }

    /// How well this route's host matches `host`: `None` if not at all; higher is better.
    fn host_score(&self, host: &str) -> Option<usize> {
        if self.host == host {
            return Some(usize::MAX);
        }
        let suffix = self.host.strip_prefix("*.")?;
        let rest = host.strip_suffix(suffix)?;
        (rest.len() > 1 && rest.ends_with('.')).then_some(suffix.len())
    }

    /// Whether `path` is under this route's location (`/api` covers `/api` and `/api/x`, not
    /// `/apix`).
    fn covers(&self, path: &str) -> bool {
        self.location == "/"
            || path == self.location
            || path.strip_prefix(self.location.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Every route of every connected client. The lock is held for single operations only.
#[derive(Debug, Default)]
pub(crate) struct Router {
    routes: Mutex<Vec<Arc<Route>>>,
}

impl Router {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Route>>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the routes of HTTP service `spec`, if the client may claim its names and no other
    /// session serves the same name and path.
    /// `Https` routes go to the HTTPS (SNI) port and have no locations; `Ws` routes are
    /// WebSocket bridges on the HTTP port.
    pub fn register(
        &self,
        spec: &ServiceSpec,
        http: &HttpSpec,
        session: &Session,
        entry: Option<&ClientEntry>,
        vhost: &VhostFile,
    ) -> RegisterOutcome {
        let tls = spec.kind == ServiceKind::Https;
        let bridge = spec.kind == ServiceKind::Ws;
        let bind = if tls { vhost.https_bind } else { vhost.http_routes_bind() };
        let Some(port) = bind.map(|a| a.port()) else {
            return RegisterOutcome::Invalid(format!(
                "this server has no {} port",
                if tls { "HTTPS" } else { "vhost" }
            ));
        };
        if tls && !http.locations.is_empty() {
            return RegisterOutcome::Invalid("TLS is passed through: an HTTPS service has no `locations`".into());
        }
        let mut hosts = Vec::new();
        for domain in &http.custom_domains {
            if !entry.is_some_and(|e| e.allows_domain(domain)) {
                return RegisterOutcome::DomainNotAllowed(domain.clone());
            }
            hosts.push(domain.clone());
        }
        if let Some(sub) = &http.subdomain {
            match &vhost.subdomain_host {
                Some(base) if !sub.is_empty() && !sub.contains('*') => {
                    hosts.push(format!("{sub}.{}", wmproxy_config::vhost::normalize_host(base)));
                }
                _ => return RegisterOutcome::DomainNotAllowed(sub.clone()),
            }
        }
        let locations = if http.locations.is_empty() { vec!["/".to_owned()] } else { http.locations.clone() };
        let authorization = http.basic_auth.as_ref().map(|a| basic_authorization(&a.user, &a.password));
        let mut routes = self.lock();
        for host in &hosts {
            for location in &locations {
                let taken = |r: &&Arc<Route>| &r.host == host && &r.location == location && r.tls == tls;
                if routes.iter().filter(taken).any(|r| !r.owned_by(session.id)) {
                    return RegisterOutcome::RouteTaken(format!("{host}{location}"));
                }
            }
        }
        for host in &hosts {
            for location in &locations {
                routes.push(Arc::new(Route {
                    host: host.clone(),
                    location: location.clone(),
                    tls,
                    bridge,
                    target: Target::Service {
                        session_id: session.id,
                        client: session.name.clone(),
                        conn: session.conn.clone(),
                        streams: session.streams.clone(),
                        service: spec.name.clone(),
                    },
                    host_rewrite: http.host_header_rewrite.clone(),
                    authorization: authorization.clone(),
                }));
            }
        }
        RegisterOutcome::Ok { port }
    }

    /// Sets the routes of an `http` or `https` group (validated config: names unique): any routes
    /// it had are replaced in the same step, so a reload leaves no moment without them.
    pub fn add_group(&self, group: &Arc<Group>, file: &GroupFile) {
        let tls = file.kind == ServiceType::Https;
        let locations = if file.locations.is_empty() { vec!["/".to_owned()] } else { file.locations.clone() };
        let mut routes = self.lock();
        routes.retain(|r| !matches!(&r.target, Target::Group(g) if g.name == group.name));
        for host in &file.custom_domains {
            for location in &locations {
                routes.push(Arc::new(Route {
                    host: host.clone(),
                    location: location.clone(),
                    tls,
                    bridge: false,
                    target: Target::Group(group.clone()),
                    host_rewrite: None,
                    authorization: None,
                }));
            }
        }
    }

    /// Removes the routes of `service` of session `id` (the client withdrew it).
    pub fn remove_service(&self, id: u64, service: &str) {
        self.lock().retain(|r| {
            !matches!(&r.target, Target::Service { session_id, service: s, .. } if *session_id == id && s == service)
        });
    }

    /// Removes the routes of the group `name` (a reload removed or changed it).
    pub fn remove_group(&self, name: &str) {
        self.lock().retain(|r| !matches!(&r.target, Target::Group(g) if g.name == name));
    }

    /// Removes every route of session `id` (it ended or was replaced).
    pub fn remove_session(&self, id: u64) {
        self.lock().retain(|r| !r.owned_by(id));
    }

    /// The route for a request to `host` (normalized) and `path`, on the HTTPS port if `tls`.
    pub fn find(&self, host: &str, path: &str, tls: bool) -> Option<Arc<Route>> {
        let routes = self.lock();
        routes
            .iter()
            .filter(|r| r.tls == tls)
            .filter_map(|r| Some((r.host_score(host)?, r)))
            .filter(|(_, r)| r.covers(path))
            .max_by_key(|(score, r)| (*score, r.location.len()))
            .map(|(_, r)| r.clone())
    }
}
