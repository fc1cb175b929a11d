//! The routes of the vhost and HTTPS ports: a host name and path prefix lead to a client's
//! service or to a group. [`Routes`] indexes them by host, so a request costs a few hash
//! lookups, never a scan of every route: the exact host first, then each wildcard suffix from
//! the longest (`a.b.example.com` tries `*.b.example.com`, then `*.example.com`, then
//! `*.com`), and within a host the longest path prefix that covers the request's path.
//!
//! Routes are claimed by an owner (a session's registration, or a group of the config) and
//! held by a [`RouteHandle`]: dropping the handle takes them out. A host name and path that
//! one owner holds cannot be claimed by another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Whether `path` is under this route's location (`/api` covers `/api` and `/api/x`, not
    /// `/apix`).
    fn covers(&self, path: &str) -> bool {
        self.location == "/"
            || path == self.location
            || path.strip_prefix(self.location.as_str()).is_some_and(|rest| rest.starts_with('/'))
    }
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
            }
        }
        placed
    }

    fn remove(&mut self, placed: &[(Slot, u64)]) {
        for (slot, id) in placed {
            if let Some(routes) = self.by_slot.get_mut(slot) {
                routes.retain(|r| r.id != *id);
                if routes.is_empty() {
                    self.by_slot.remove(slot);
                }
            }
        }
    }
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

    /// Claims `hosts` × `locations` for `owner`, unless another owner holds one of them: then
    /// the first one held (`host` + `location`) is the error, and nothing is claimed.
    pub fn claim(
        self: &Arc<Self>,
        owner: RouteOwner,
        template: &Template,
        hosts: &[String],
        locations: &[String],
    ) -> Result<RouteHandle, String> {
        let mut index = self.write();
        for host in hosts {
            let Some(routes) = index.by_slot.get(&Slot::of(template.tls, host)) else { continue };
            for location in locations {
                if routes.iter().any(|r| &r.host == host && &r.location == location && r.owner != owner) {
                    return Err(format!("{host}{location}"));
                }
            }
        }
        let placed = index.insert(&owner, template, hosts, locations);
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
        let placed = index.insert(&owner, template, hosts, locations);
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

    fn template(tls: bool) -> Template {
        let group = Arc::new(Group::for_tests("g"));
        Template { tls, bridge: false, target: RouteTarget::Group(group), host_rewrite: None, authorization: None }
    }

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn found(routes: &Routes, host: &str, path: &str) -> Option<String> {
        routes.find(host, path, false).map(|r| format!("{}{}", r.host, r.location))
    }

    #[test]
    fn exact_beats_wildcard_longer_suffix_beats_shorter_then_longest_path() {
        let routes = Arc::new(Routes::default());
        let owner = RouteOwner::Session(1);
        let _a = routes.claim(owner.clone(), &template(false), &hosts(&["*.example.com"]), &hosts(&["/"]));
        let _b = routes.claim(owner.clone(), &template(false), &hosts(&["*.b.example.com"]), &hosts(&["/"]));
        let _c = routes.claim(owner.clone(), &template(false), &hosts(&["a.b.example.com"]), &hosts(&["/api"]));
        assert_eq!(found(&routes, "a.b.example.com", "/api/x").as_deref(), Some("a.b.example.com/api"));
        // The exact host has no route for `/`: the longest wildcard that covers it answers.
        assert_eq!(found(&routes, "a.b.example.com", "/").as_deref(), Some("*.b.example.com/"));
        assert_eq!(found(&routes, "x.example.com", "/").as_deref(), Some("*.example.com/"));
        assert_eq!(found(&routes, "example.com", "/"), None, "a wildcard needs a label before it");
        assert_eq!(found(&routes, ".example.com", "/"), None);
        assert_eq!(found(&routes, "a.b.example.com", "/apix").as_deref(), Some("*.b.example.com/"));
        assert!(routes.find("x.example.com", "/", true).is_none(), "the HTTPS port has its own routes");
    }

    #[test]
    fn a_route_held_by_one_owner_is_refused_to_another_and_freed_on_drop() {
        let routes = Arc::new(Routes::default());
        let held = routes.claim(RouteOwner::Session(1), &template(false), &hosts(&["a.com"]), &hosts(&["/"]));
        let taken = routes.claim(RouteOwner::Session(2), &template(false), &hosts(&["a.com"]), &hosts(&["/"]));
        assert_eq!(taken.err().as_deref(), Some("a.com/"));
        drop(held);
        assert_eq!(found(&routes, "a.com", "/"), None);
        assert!(routes.claim(RouteOwner::Session(2), &template(false), &hosts(&["a.com"]), &hosts(&["/"])).is_ok());
    }

    #[test]
    fn a_group_replaces_its_routes_in_one_step() {
        let routes = Arc::new(Routes::default());
        let owner = RouteOwner::Group(Name::new("g").unwrap_or_else(|e| panic!("{e}")));
        let first = routes.replace(None, owner.clone(), &template(false), &hosts(&["old.com"]), &hosts(&["/"]));
        let second = routes.replace(Some(first), owner, &template(false), &hosts(&["new.com"]), &hosts(&["/"]));
        assert_eq!(found(&routes, "old.com", "/"), None);
        assert_eq!(found(&routes, "new.com", "/").as_deref(), Some("new.com/"));
        drop(second);
        assert!(routes.read().by_slot.is_empty());
    }
}
