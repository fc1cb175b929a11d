//! The routes of the vhost and HTTPS ports: a host name and path prefix lead to a client's
//! service or to a group. [`Routes`] indexes them by host, so a request costs a few hash
//! lookups, never a scan of every route: the exact host first, then each wildcard suffix from
//! the longest (`a.b.example.com` tries `*.b.example.com`, then `*.example.com`, then
//! `*.com`), and within a host the longest path prefix that covers the request's path.
//!
//! Routes are claimed by an owner (a session's registration, or a group of the config) and
//! held by a [`RouteHandle`]: dropping the handle takes them out. A host name belongs to the
//! owner that claimed it first, with every path under it, on the HTTP and HTTPS ports alike:
//! another session's claim of the same name is refused ([`Refused::HostTaken`]) until the
//! owner lets go of it. Names are taken literally: `*.example.com` and `a.example.com` are two
//! names (which of them a client may claim is its `allow_domains`). A group's routes are the
//! operator's and are never refused; where they share a name with a session's, the group's
//! route wins on an equal path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::warn;
use wmproxy_tunnel::upstream::FlowRoute;
use wmproxy_tunnel::{Ask, OpenError, Opened, Upstream};
use wmproxy_wire::Name;

use crate::groups::Group;
use crate::sessions::SessionId;
use crate::upstream::{Served, ServiceUpstream};

/// What serves a route.
#[derive(Debug, Clone)]
pub(crate) enum RouteTarget {
    /// One client's service.
    Service(ServiceUpstream),
    /// A group's backends.
    Group(Arc<Group>),
}

impl Upstream for RouteTarget {
    type By = Served;

    async fn open(&self, peer: SocketAddr, ask: Ask) -> Result<Opened<Served>, OpenError> {
        match self {
            Self::Service(service) => service.open(peer, ask).await,
            Self::Group(group) => group.open(peer, ask).await,
        }
    }

    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError> {
        match self {
            Self::Service(service) => service.flow(peer, ask),
            Self::Group(group) => group.flow(peer, ask),
        }
    }
}

/// Who holds a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RouteOwner {
    /// A client's registration.
    Session(SessionId),
    /// A group of the config.
    Group(Name),
}

/// What a route does with a request, the same for each of its host names and paths.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// Served on the HTTPS (SNI) port rather than the HTTP one.
    pub tls: bool,
    /// A `ws` service: the server accepts the WebSocket and bridges it to a TCP stream.
    pub bridge: bool,
    /// Who serves it.
    pub target: RouteTarget,
    /// The `Host` the backend sees, if not the user's.
    pub host_rewrite: Option<String>,
    /// The `Authorization` value a request must carry (`Basic …`), if any.
    pub authorization: Option<String>,
}

/// One host name and path prefix.
#[derive(Debug)]
pub(crate) struct Route {
    id: u64,
    owner: RouteOwner,
    /// `example.com` or `*.example.com`, lower-case.
    host: String,
    /// A path prefix starting with `/`.
    location: String,
    /// What it does.
    pub template: Template,
}

impl Route {
    /// `host` + `location`, as the route was claimed.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn name(&self) -> String {
        format!("{}{}", self.host, self.location)
    }

    /// Whether `path` is under this route's location (`/api` covers `/api` and `/api/x`, not
    /// `/apix`).
    /// `/api/` covers everything under `/api/`.
    fn covers(&self, path: &str) -> bool {
        self.location == "/"
            || path
                .strip_prefix(self.location.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || self.location.ends_with('/'))
    }
}

/// Why a claim was refused; nothing of it was claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Another owner holds this host name.
    #[error("host name `{0}` belongs to another owner")]
    HostTaken(String),
    /// The owner already serves this host name and path (another of its services does).
    #[error("`{0}` is already served")]
    Routed(String),
    /// The claim would take the owner past its number of routes.
    #[error("more than {0} routes")]
    TooMany(usize),
}

/// Where a route sits in the index: HTTPS or HTTP, exact or wildcard, and its host (for a
/// wildcard, the suffix after `*.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    tls: bool,
    wildcard: bool,
    host: String,
}

impl Slot {
    fn of(tls: bool, host: &str) -> Self {
        match host.strip_prefix("*.") {
            Some(suffix) => Self { tls, wildcard: true, host: suffix.to_owned() },
            None => Self { tls, wildcard: false, host: host.to_owned() },
        }
    }
}

#[derive(Debug, Default)]
struct Index {
    next_id: u64,
    by_slot: HashMap<Slot, Vec<Arc<Route>>>,
    /// How many routes each owner has under each host name, both ports together.
    owners: HashMap<String, HashMap<RouteOwner, usize>>,
    /// How many routes each owner has in all.
    per_owner: HashMap<RouteOwner, usize>,
}

impl Index {
    /// The route of `slot` for `path`: the longest covering location, the latest on a tie.
    fn best(&self, slot: &Slot, path: &str) -> Option<Arc<Route>> {
        let routes = self.by_slot.get(slot)?;
        routes.iter().filter(|r| r.covers(path)).max_by_key(|r| r.location.len()).cloned()
    }

    fn insert(
        &mut self,
        owner: &RouteOwner,
        template: &Template,
        hosts: &[String],
        locations: &[String],
    ) -> Vec<(Slot, u64)> {
        let mut placed = Vec::with_capacity(hosts.len() * locations.len());
        for host in hosts {
            for location in locations {
                self.next_id += 1;
                let slot = Slot::of(template.tls, host);
                let route = Route {
                    id: self.next_id,
                    owner: owner.clone(),
                    host: host.clone(),
                    location: location.clone(),
                    template: template.clone(),
                };
                self.by_slot.entry(slot.clone()).or_default().push(Arc::new(route));
                placed.push((slot, self.next_id));
                *self.owners.entry(host.clone()).or_default().entry(owner.clone()).or_default() += 1;
                *self.per_owner.entry(owner.clone()).or_default() += 1;
            }
        }
        placed
    }

    fn remove(&mut self, placed: &[(Slot, u64)]) {
        for (slot, id) in placed {
            let Some(routes) = self.by_slot.get_mut(slot) else { continue };
            let Some(at) = routes.iter().position(|r| r.id == *id) else { continue };
            let route = routes.swap_remove(at);
            if routes.is_empty() {
                self.by_slot.remove(slot);
            }
            if let Some(owners) = self.owners.get_mut(&route.host) {
                forget(owners, &route.owner);
                if owners.is_empty() {
                    self.owners.remove(&route.host);
                }
            }
            forget(&mut self.per_owner, &route.owner);
        }
    }

    /// Why `owner` may not claim `hosts` × `locations` on the HTTPS port if `tls`, if so.
    fn refusal(&self, owner: &RouteOwner, tls: bool, hosts: &[String], locations: &[String]) -> Option<Refused> {
        for host in hosts {
            if self.owners.get(host).is_some_and(|owners| owners.keys().any(|o| o != owner)) {
                return Some(Refused::HostTaken(host.clone()));
            }
            let Some(routes) = self.by_slot.get(&Slot::of(tls, host)) else { continue };
            if let Some(location) =
                locations.iter().find(|l| routes.iter().any(|r| &r.host == host && &r.location == *l))
            {
                return Some(Refused::Routed(format!("{host}{location}")));
            }
        }
        None
    }
}

/// Takes one from `owner`'s count in `counts`, and the entry out when it reaches zero.
fn forget(counts: &mut HashMap<RouteOwner, usize>, owner: &RouteOwner) {
    if let Some(count) = counts.get_mut(owner) {
        *count -= 1;
        if *count == 0 {
            counts.remove(owner);
        }
    }
}

/// `items` without repeats, in their first order.
fn unique(items: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().filter(|i| seen.insert(i.as_str())).cloned().collect()
}

/// Every route of the server, by host. Lookups take a read lock; claims and withdrawals a
/// write lock, never across an `.await`.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    index: RwLock<Index>,
}

/// Routes an owner holds; dropping it takes them out.
#[derive(Debug)]
pub(crate) struct RouteHandle {
    routes: Arc<Routes>,
    placed: Vec<(Slot, u64)>,
}

impl Drop for RouteHandle {
    fn drop(&mut self) {
        if !self.placed.is_empty() {
            self.routes.write().remove(&self.placed);
        }
    }
}

impl Routes {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        // Every change is made whole under the lock: a poisoned one is still consistent.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `hosts` × `locations` (each once, however often it is listed) for `owner`. It is
    /// refused, and nothing is claimed, if another owner holds one of the host names, if
    /// `owner` already serves one of the routes, or if `owner` would hold more than `limit`
    /// routes in all.
    pub fn claim(
        self: &Arc<Self>,
        owner: RouteOwner,
        template: &Template,
        (hosts, locations): (&[String], &[String]),
        limit: usize,
    ) -> Result<RouteHandle, Refused> {
        let (hosts, locations) = (unique(hosts), unique(locations));
        let mut index = self.write();
        if let Some(refused) = index.refusal(&owner, template.tls, &hosts, &locations) {
            return Err(refused);
        }
        let held = index.per_owner.get(&owner).copied().unwrap_or(0);
        if held.saturating_add(hosts.len() * locations.len()) > limit {
            return Err(Refused::TooMany(limit));
        }
        let placed = index.insert(&owner, template, &hosts, &locations);
        Ok(RouteHandle { routes: self.clone(), placed })
    }

    /// Puts a group's routes in place of those `handle` held, in one step (a reload leaves no
    /// moment without them). A group's routes are the operator's: no claim is refused.
    pub fn replace(
        self: &Arc<Self>,
        handle: Option<RouteHandle>,
        owner: RouteOwner,
        template: &Template,
        hosts: &[String],
        locations: &[String],
    ) -> RouteHandle {
        // The old handle is emptied under the lock, so its drop (after the lock) takes nothing.
        let mut old = handle;
        let mut index = self.write();
        if let Some(old) = &mut old {
            index.remove(&std::mem::take(&mut old.placed));
        }
        let (hosts, locations) = (unique(hosts), unique(locations));
        for host in &hosts {
            if index.owners.get(host).is_some_and(|owners| owners.keys().any(|o| *o != owner)) {
                warn!(host, group = ?owner, "a group's host name is also held by a client; the group's routes win");
            }
        }
        let placed = index.insert(&owner, template, &hosts, &locations);
        drop(index);
        drop(old);
        RouteHandle { routes: self.clone(), placed }
    }

    /// The route for a request to `host` (normalized) and `path`, on the HTTPS port if `tls`.
    pub fn find(&self, host: &str, path: &str, tls: bool) -> Option<Arc<Route>> {
        let index = self.read();
        if let Some(route) = index.best(&Slot { tls, wildcard: false, host: host.to_owned() }, path) {
            return Some(route);
        }
        // `*.x` matches a host that ends in `.x` with at least one character before the dot.
        host.match_indices('.')
            .filter(|(at, _)| *at > 0)
            .find_map(|(at, _)| index.best(&Slot { tls, wildcard: true, host: host[at + 1..].to_owned() }, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 256;

    fn template(tls: bool) -> Template {
        let group = Arc::new(Group::for_tests("g"));
        Template { tls, bridge: false, target: RouteTarget::Group(group), host_rewrite: None, authorization: None }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn claim(
        routes: &Arc<Routes>,
        session: SessionId,
        tls: bool,
        hosts: &[&str],
        paths: &[&str],
    ) -> Result<RouteHandle, Refused> {
        routes.claim(RouteOwner::Session(session), &template(tls), (&strings(hosts), &strings(paths)), LIMIT)
    }

    fn found(routes: &Routes, host: &str, path: &str) -> Option<String> {
        routes.find(host, path, false).map(|r| r.name())
    }

    #[test]
    fn exact_beats_wildcard_longer_suffix_beats_shorter_then_longest_path() {
        let routes = Arc::new(Routes::default());
        let _a = claim(&routes, 1, false, &["*.example.com"], &["/"]);
        let _b = claim(&routes, 1, false, &["*.b.example.com"], &["/"]);
        let _c = claim(&routes, 1, false, &["a.b.example.com"], &["/api", "/docs/"]);
        assert_eq!(found(&routes, "a.b.example.com", "/api/x").as_deref(), Some("a.b.example.com/api"));
        assert_eq!(found(&routes, "a.b.example.com", "/docs/x").as_deref(), Some("a.b.example.com/docs/"));
        // The exact host has no route for `/`: the longest wildcard that covers it answers.
        assert_eq!(found(&routes, "a.b.example.com", "/").as_deref(), Some("*.b.example.com/"));
        assert_eq!(found(&routes, "x.example.com", "/").as_deref(), Some("*.example.com/"));
        assert_eq!(found(&routes, "example.com", "/"), None, "a wildcard needs a label before it");
        assert_eq!(found(&routes, ".example.com", "/"), None);
        assert_eq!(found(&routes, "a.b.example.com", "/apix").as_deref(), Some("*.b.example.com/"));
        assert_eq!(found(&routes, "a.b.example.com", "/docs").as_deref(), Some("*.b.example.com/"));
        assert!(routes.find("x.example.com", "/", true).is_none(), "the HTTPS port has its own routes");
    }

    #[test]
    fn a_host_held_by_one_session_is_refused_to_another_at_any_path_and_port_until_dropped() {
        let routes = Arc::new(Routes::default());
        let held = claim(&routes, 1, false, &["a.com"], &["/"]);
        assert!(held.is_ok());
        let taken = Some(Refused::HostTaken("a.com".into()));
        assert_eq!(claim(&routes, 2, false, &["a.com"], &["/"]).err(), taken);
        assert_eq!(claim(&routes, 2, false, &["a.com"], &["/api"]).err(), taken);
        assert_eq!(claim(&routes, 2, true, &["a.com"], &["/"]).err(), taken);
        // Nothing of a refused claim is kept: `b.com` stays free.
        assert_eq!(claim(&routes, 2, false, &["b.com", "a.com"], &["/"]).err(), taken);
        assert_eq!(found(&routes, "b.com", "/"), None);
        // The owner itself may add paths, and its HTTPS name.
        let more = claim(&routes, 1, false, &["a.com"], &["/api"]);
        let tls = claim(&routes, 1, true, &["a.com"], &["/"]);
        assert!(more.is_ok() && tls.is_ok());
        drop((held, more, tls));
        assert_eq!(found(&routes, "a.com", "/"), None);
        assert!(claim(&routes, 2, false, &["a.com"], &["/api"]).is_ok());
    }

    #[test]
    fn routes_are_claimed_once_and_counted_against_the_limit() {
        let routes = Arc::new(Routes::default());
        let twice = claim(&routes, 1, false, &["a.com", "a.com"], &["/", "/x", "/"]);
        assert_eq!(twice.as_ref().map(|h| h.placed.len()).ok(), Some(2), "each route once");
        assert_eq!(claim(&routes, 1, false, &["a.com"], &["/x"]).err(), Some(Refused::Routed("a.com/x".into())));
        let owner = RouteOwner::Session(3);
        let hosts: Vec<String> = (0..8).map(|i| format!("h{i}.com")).collect();
        let paths: Vec<String> = (0..8).map(|i| format!("/p{i}")).collect();
        let first = routes.claim(owner.clone(), &template(false), (&hosts, &paths), 100);
        assert!(first.is_ok(), "64 routes");
        let more = routes.claim(owner.clone(), &template(false), (&strings(&["z.com"]), &paths[..4]), 67);
        assert_eq!(more.err(), Some(Refused::TooMany(67)), "64 + 4 > 67");
        drop(first);
        assert!(routes.claim(owner, &template(false), (&strings(&["z.com"]), &paths[..4]), 67).is_ok());
    }

    #[test]
    fn a_group_replaces_its_routes_in_one_step_and_its_names_are_never_refused() {
        let routes = Arc::new(Routes::default());
        let owner = RouteOwner::Group(Name::new("g").unwrap_or_else(|e| panic!("{e}")));
        let session = claim(&routes, 1, false, &["shared.com"], &["/"]);
        let first = routes.replace(None, owner.clone(), &template(false), &strings(&["old.com"]), &strings(&["/"]));
        let hosts = strings(&["new.com", "shared.com"]);
        let second = routes.replace(Some(first), owner, &template(false), &hosts, &strings(&["/"]));
        assert_eq!(found(&routes, "old.com", "/"), None);
        assert_eq!(found(&routes, "new.com", "/").as_deref(), Some("new.com/"));
        assert!(matches!(routes.find("shared.com", "/", false).map(|r| r.owner.clone()), Some(RouteOwner::Group(_))));
        assert_eq!(claim(&routes, 1, false, &["new.com"], &["/x"]).err(), Some(Refused::HostTaken("new.com".into())));
        drop((second, session));
        let index = routes.read();
        assert!(index.by_slot.is_empty() && index.owners.is_empty() && index.per_owner.is_empty());
    }
}
