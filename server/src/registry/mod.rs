//! The registry of publications: everything a client has published, one entry per (session,
//! service), each owning what makes it reachable:
//!
//! | owner | what dropping it does |
//! |---|---|
//! | a public TCP or UDP port ([`ports::PortHandle`]) | the port stops accepting at once; live connections get the drain grace period |
//! | vhost or SNI routes ([`crate::routes::RouteHandle`]) | the host names and paths go out of the index |
//! | a group membership ([`crate::groups::Membership`]) | the backend leaves its group |
//! | a private service (`PrivateService`, visited through `crate::visit`) | visits find it no more; its visitors' label sets go |
//!
//! An entry withdraws itself when it is dropped, and that is the only teardown there is: a
//! re-registration drops the entries whose spec changed or went away ([`Registry::register`]),
//! and the end of a session, whether it left, was replaced or was revoked by a reload, drops
//! all of its entries ([`Registry::end`]). A server proxy's `via` is not an entry: it names a
//! client, and each proxy connection looks the client's live session up, so a reconnected
//! client serves it at once.
//!
//! A registration is checked against the running config as it is when the registration runs
//! (under the session's registration lock), and a reload revises every live session under the
//! same lock ([`Registry::revise`]): whatever the new config no longer allows is withdrawn, and
//! the client is told. Either the registration runs first and the revision sees what it
//! published, or the revision runs first and the registration sees the new config; nothing
//! slips between them.
//!
//! - `publish`: what each kind of service publishes.
//! - `revise`: what a reloaded config takes back.
//! - [`ports`]: public TCP and UDP ports.

mod ports;
mod publish;

pub(crate) use publish::PrivateService;
mod revise;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wmproxy_ops::control::HttpNames;
use wmproxy_wire::{MAX_SERVICES, Name, PrivateSpec, RegisterOutcome, ServiceKind, ServiceResult, ServiceSpec};

use crate::groups::{Backend, Groups, Membership};
use crate::metrics::ServiceLease;
use crate::routes::{RouteHandle, Routes};
use crate::runtime::Serving;
use crate::sessions::{Session, SessionId, Sessions};
use crate::settings::ConfigCell;
use crate::udp::UdpBudget;
use crate::upstream::ServiceUpstream;

/// Where HTTP-like services are served, as bound.
#[derive(Debug, Clone, Default)]
pub(crate) struct VhostPorts {
    /// The port `http` and `ws` services are reached on, if any.
    pub http: Option<u16>,
    /// The HTTPS (SNI) port, if any.
    pub https: Option<u16>,
    /// `subdomain = "x"` services are served at `x.<subdomain_host>` (lower-case).
    pub subdomain_host: Option<String>,
}

/// What keeps one publication reachable; dropping it withdraws it.
#[derive(Debug)]
pub(crate) enum Owner {
    /// A public TCP or UDP port.
    Port(ports::PortHandle),
    /// Host names (and paths) on the vhost or HTTPS port.
    Routes(#[allow(dead_code, reason = "held for its drop, which withdraws the routes")] RouteHandle),
    /// A place in a group.
    Member(Membership),
    /// A private service: reached only by visits.
    Private(PrivateService),
}

/// One published service.
#[derive(Debug)]
struct Publication {
    /// What was asked: a registration with the same spec keeps the entry as it is.
    spec: ServiceSpec,
    /// What it got.
    outcome: RegisterOutcome,
    owner: Owner,
    /// Its label set in the per-service metrics, removed with the publication.
    _counted: ServiceLease,
}

/// Every publication of every session.
#[derive(Debug)]
pub(crate) struct Registry {
    entries: Mutex<HashMap<SessionId, HashMap<Name, Publication>>>,
    /// The running config: each registration and revision reads the allowances of now.
    config: Arc<ConfigCell>,
    routes: Arc<Routes>,
    groups: Arc<Groups>,
    serving: Serving,
    udp: UdpBudget,
    public_bind: IpAddr,
    vhost: VhostPorts,
}

impl Registry {
    pub fn new(
        config: Arc<ConfigCell>,
        routes: Arc<Routes>,
        groups: Arc<Groups>,
        serving: Serving,
        udp: UdpBudget,
        (public_bind, vhost): (IpAddr, VhostPorts),
    ) -> Self {
        Self { entries: Mutex::default(), config, routes, groups, serving, udp, public_bind, vhost }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, HashMap<Name, Publication>>> {
        // Single inserts and removes: a poisoned lock still holds a consistent map.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `specs` the published services of `session`, within the allowances its entry in
    /// the running config has now. One result per spec, in order; a bad spec does not affect
    /// the others. Entries whose spec is unchanged are kept as they are (ports and connections);
    /// the others are withdrawn first, so a changed service can take its port again.
    pub async fn register(&self, session: &Arc<Session>, specs: Vec<ServiceSpec>) -> Vec<ServiceResult> {
        let _one_at_a_time = session.registration.lock().await;
        let config = self.config.snapshot();
        let Some(entry) = config.client(&session.name) else {
            // A reload removed its entry and is about to disconnect it: publish nothing.
            let removed = || RegisterOutcome::Invalid("this client was removed".into());
            return specs.into_iter().map(|s| ServiceResult { name: s.name, outcome: removed() }).collect();
        };
        let mut wanted: HashMap<&str, &ServiceSpec> = HashMap::new();
        for spec in specs.iter().take(MAX_SERVICES) {
            wanted.entry(spec.name.as_str()).or_insert(spec);
        }
        let stale: Vec<(Name, Publication)> = match self.lock().get_mut(&session.id) {
            Some(mine) => {
                let names: Vec<Name> = mine
                    .iter()
                    .filter(|(name, p)| wanted.get(name.as_str()) != Some(&&p.spec))
                    .map(|(n, _)| n.clone())
                    .collect();
                names.into_iter().filter_map(|n| mine.remove(&n).map(|p| (n, p))).collect()
            }
            None => Vec::new(),
        };
        for (name, _) in &stale {
            info!(service = %name, "service withdrawn");
        }
        withdraw(stale).await;

        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(specs.len().min(MAX_SERVICES));
        let mut routes = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let kept = self.lock().get(&session.id).and_then(|mine| mine.get(&spec.name).map(|p| p.outcome.clone()));
            let outcome = if i >= MAX_SERVICES {
                RegisterOutcome::Invalid(format!("more than {MAX_SERVICES} services"))
            } else if !seen.insert(spec.name.clone()) {
                RegisterOutcome::Invalid(format!("duplicate service name `{}`", spec.name))
            } else if let Some(kept) = kept {
                debug!(service = %spec.name, "service unchanged; kept");
                if let (RegisterOutcome::Ok { .. }, Some(http)) = (&kept, &spec.http) {
                    routes.push((spec.name.clone(), HttpNames::from(http)));
                }
                results.push(ServiceResult { name: spec.name, outcome: kept });
                continue;
            } else {
                match self.publish(&spec, session, entry) {
                    Ok((owner, outcome)) => {
                        let _counted = self.serving.metrics.services.lease(&session.name, &spec.name);
                        let publication = Publication { spec: spec.clone(), outcome: outcome.clone(), owner, _counted };
                        self.insert(session, &spec, publication);
                        outcome
                    }
                    Err(refused) => refused,
                }
            };
            match &outcome {
                RegisterOutcome::Ok { port } => match &spec.http {
                    Some(http) => {
                        let names = HttpNames::from(http);
                        let (domains, subdomain, locations) = (&names.domains, &names.subdomain, &names.locations);
                        info!(service = %spec.name, port, ?domains, ?subdomain, ?locations, "service published");
                        routes.push((spec.name.clone(), names));
                    }
                    None => info!(service = %spec.name, port, "service published"),
                },
                RegisterOutcome::Joined { port } => info!(service = %spec.name, port, "service joined its group"),
                RegisterOutcome::Private => info!(service = %spec.name, "private service published"),
                refused => warn!(service = %spec.name, port = spec.remote_port, reason = %refused, "service refused"),
            }
            results.push(ServiceResult { name: spec.name, outcome });
        }
        session.set_results(&results, routes);
        results
    }

    /// Records a new publication, unless the session has ended meanwhile (a reload may end it
    /// while it registers): then the publication is dropped, which withdraws it.
    /// The check is made under the lock, and [`Registry::end`] closes the tunnel before it
    /// takes the lock, so no entry can outlive its session.
    fn insert(&self, session: &Session, spec: &ServiceSpec, publication: Publication) {
        let mut entries = self.lock();
        if session.tunnel.conn().close_reason().is_some() {
            drop(entries);
            return drop(publication);
        }
        entries.entry(session.id).or_default().insert(spec.name.clone(), publication);
    }

    /// Withdraws every publication of `session` (waiting until their ports are closed) but
    /// leaves its tunnel up, for the connections in flight through it: the first step of
    /// retiring a replaced session.
    pub async fn withdraw_all(&self, session: &Session) {
        let entries = self.lock().remove(&session.id).unwrap_or_default();
        withdraw(entries.into_iter().collect()).await;
    }

    /// Ends `session`: closes its tunnel with `code` and `reason` (the client sees both),
    /// withdraws everything it published (its ports are closed when this returns), and takes it
    /// out of `sessions` unless a newer session of the client has replaced it.
    pub async fn end(&self, sessions: &Sessions, session: &Session, code: u32, reason: &str) {
        session.tunnel.close(code, reason);
        let entries = self.lock().remove(&session.id).unwrap_or_default();
        withdraw(entries.into_iter().collect()).await;
        sessions.remove(session);
    }

    /// Who may visit `service` of `session`, and how it is reached, if it is a published
    /// private service of `kind`.
    pub fn private(
        &self,
        session: SessionId,
        service: &str,
        kind: ServiceKind,
    ) -> Option<(PrivateSpec, ServiceUpstream)> {
        let entries = self.lock();
        match &entries.get(&session)?.get(service)?.owner {
            Owner::Private(p) if p.kind == kind => Some((p.access.clone(), p.upstream.clone())),
            _ => None,
        }
    }

    /// The group backend that `service` of `session` is, if it joined a group.
    pub fn backend(&self, session: SessionId, service: &str) -> Option<Arc<Backend>> {
        let entries = self.lock();
        match &entries.get(&session)?.get(service)?.owner {
            Owner::Member(m) => Some(m.backend().clone()),
            _ => None,
        }
    }
}

/// Drops `publications` (withdrawing each), then waits until their ports are closed.
async fn withdraw(publications: Vec<(Name, Publication)>) {
    let mut closing: Vec<(Name, TaskTracker)> = Vec::new();
    for (name, publication) in publications {
        if let Owner::Port(port) = &publication.owner {
            closing.push((name.clone(), port.tasks()));
        }
        drop(publication);
        debug!(service = %name, "publication withdrawn");
    }
    for (name, tasks) in closing {
        ports::PortHandle::closed(tasks, &name).await;
    }
}
