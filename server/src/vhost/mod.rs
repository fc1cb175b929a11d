//! HTTP virtual hosts: the routes HTTP services registered (host name + path prefix → a
//! client's service), and the vhost port that routes every request by its own `Host`.
//!
//! - this module: the [`Router`] table, registration checks (the client's `allow_domains`,
//!   routes another session holds) and lookup (an exact host beats a wildcard, a longer
//!   wildcard suffix beats a shorter one, then the longest path prefix wins).
//! - `serve`: the port itself (hyper), forwarding each request over its own data stream.
//! - `sni`: the HTTPS port: reads the TLS ClientHello (rustls's `Acceptor`, nothing
//!   terminated), routes by its SNI and passes every byte through.

mod serve;
mod sni;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Semaphore;
use wmproxy_config::{ClientEntry, VhostFile};
use wmproxy_proto::wire::{HttpSpec, RegisterOutcome, ServiceKind, ServiceSpec};

pub(crate) use self::serve::serve;
pub(crate) use self::sni::serve as serve_tls;
use crate::sessions::Session;

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
    session_id: u64,
    pub conn: quinn::Connection,
    pub streams: Arc<Semaphore>,
    pub service: String,
    pub host_rewrite: Option<String>,
    /// The `Authorization` value a request must carry (`Basic …`), if the service requires it.
    pub authorization: Option<String>,
}

impl Route {
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
        let bind = if tls { vhost.https_bind } else { vhost.http_bind };
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
        let mut routes = self.lock();
        for host in &hosts {
            for location in &locations {
                let taken = |r: &&Arc<Route>| &r.host == host && &r.location == location && r.tls == tls;
                if routes.iter().filter(taken).any(|r| r.session_id != session.id) {
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
                    session_id: session.id,
                    conn: session.conn.clone(),
                    streams: session.streams.clone(),
                    service: spec.name.clone(),
                    host_rewrite: http.host_header_rewrite.clone(),
                    authorization: http.basic_auth.as_ref().map(|a| {
                        use base64::Engine;
                        let pair = format!("{}:{}", a.user, a.password);
                        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
                    }),
                }));
            }
        }
        RegisterOutcome::Ok { port }
    }

    /// Removes every route of session `id` (it ended or was replaced).
    pub fn remove_session(&self, id: u64) {
        self.lock().retain(|r| r.session_id != id);
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
