//! Publishing one service, by what it asks for: a public port, host-name routes, a place in
//! a group, or none of these (a private service). Each returns the [`Owner`] that keeps it published while it lives.

use std::sync::Arc;

use wmproxy_config::ClientEntry;
use wmproxy_frontend::http::basic_authorization;
use wmproxy_wire::private::MAX_ALLOWED_VISITORS;
use wmproxy_wire::routes::{MAX_ROUTES_PER_CLIENT, check_http};
use wmproxy_wire::{HttpSpec, PrivateSpec, RegisterOutcome, ServiceKind, ServiceSpec};

use super::ports::{self, PortHandle};
use super::{Owner, Registry};
use crate::metrics::{Metrics, VisitorsLease};
use crate::routes::{Refused, RouteOwner, RouteTarget, Template};
use crate::sessions::Session;
use crate::upstream::{Served, ServiceUpstream};

/// A published private service: who may visit, and how its client is reached. Dropping it
/// (with its publication) removes its visitors' label sets.
#[derive(Debug)]
pub(crate) struct PrivateService {
    /// TCP or UDP.
    pub kind: ServiceKind,
    pub access: PrivateSpec,
    pub upstream: ServiceUpstream,
    pub _visitors: VisitorsLease,
}

impl Registry {
    /// Publishes `spec` of `session`, within `entry`'s allowances.
    pub(super) fn publish(
        &self,
        spec: &ServiceSpec,
        session: &Arc<Session>,
        entry: &ClientEntry,
    ) -> Result<(Owner, RegisterOutcome), RegisterOutcome> {
        let served = Served { client: session.name.clone(), service: spec.name.clone() };
        if let Some(membership) = &spec.group {
            let joined = self.groups.join(served, spec.kind, membership, &session.tunnel)?;
            let port = joined.port();
            return Ok((Owner::Member(joined), RegisterOutcome::Joined { port }));
        }
        let upstream =
            ServiceUpstream::new(session.tunnel.clone(), served, self.serving.open_timeout, self.udp.clone());
        // A bandwidth limit applies to TCP and UDP ports (the client limits the other way).
        let tcp_or_udp = matches!(spec.kind, ServiceKind::Tcp | ServiceKind::Udp);
        let upstream = upstream.within(spec.bandwidth_limit.filter(|_| tcp_or_udp));
        if let Some(access) = &spec.private {
            return Self::publish_private(spec, access, upstream, &self.serving.metrics);
        }
        let at = (self.public_bind, spec.remote_port);
        let (handle, port): (PortHandle, u16) = match spec.kind {
            ServiceKind::Tcp => ports::tcp(at, &entry.allow_ports, upstream, &self.serving)?,
            ServiceKind::Udp if !session.tunnel.carries_datagrams() => {
                return Err(RegisterOutcome::DatagramsUnsupported);
            }
            ServiceKind::Udp => ports::udp(at, &entry.allow_ports, upstream, &self.serving)?,
            ServiceKind::Http | ServiceKind::Https | ServiceKind::Ws => {
                let http = spec
                    .http
                    .as_ref()
                    .ok_or_else(|| RegisterOutcome::Invalid("an HTTP service needs its host names".into()))?;
                return self.claim_routes(spec.kind, http, session, entry, upstream);
            }
            _ => return Err(RegisterOutcome::Invalid("unsupported service type".into())),
        };
        Ok((Owner::Port(handle), RegisterOutcome::Ok { port }))
    }

    /// Publishes a private service: a TCP service of its own (no group, port or routes) that
    /// restricts who may visit.
    fn publish_private(
        spec: &ServiceSpec,
        access: &PrivateSpec,
        upstream: ServiceUpstream,
        metrics: &Metrics,
    ) -> Result<(Owner, RegisterOutcome), RegisterOutcome> {
        let invalid = |m: &str| Err(RegisterOutcome::Invalid(m.to_owned()));
        if !matches!(spec.kind, ServiceKind::Tcp | ServiceKind::Udp) {
            return invalid("only a TCP or UDP service can be private");
        }
        if spec.group.is_some() || spec.http.is_some() || spec.remote_port != 0 {
            return invalid("a private service has no public port, routes or group");
        }
        if !access.restricts() {
            return invalid("a private service needs a secret or a list of allowed visitors");
        }
        if access.allow.len() > MAX_ALLOWED_VISITORS {
            return invalid(&format!("at most {MAX_ALLOWED_VISITORS} allowed visitors"));
        }
        let served = upstream.served();
        let _visitors = metrics.visitors.lease(&served.client, &served.service);
        let private = PrivateService { kind: spec.kind, access: access.clone(), upstream, _visitors };
        Ok((Owner::Private(private), RegisterOutcome::Private))
    }

    /// Claims the host names (and paths) of an HTTP-like service, if they are well formed and
    /// within the caps ([`wmproxy_wire::routes`]), the client may claim each name (its
    /// `allow_domains`; a subdomain too, as the full name it becomes) and no other owner holds
    /// one of them. `Https` routes go to the HTTPS (SNI) port and have no locations; `Ws`
    /// routes are WebSocket bridges on the HTTP port.
    fn claim_routes(
        &self,
        kind: ServiceKind,
        http: &HttpSpec,
        session: &Session,
        entry: &ClientEntry,
        upstream: ServiceUpstream,
    ) -> Result<(Owner, RegisterOutcome), RegisterOutcome> {
        let tls = kind == ServiceKind::Https;
        let port = if tls { self.vhost.https } else { self.vhost.http };
        let port = port.ok_or_else(|| {
            RegisterOutcome::Invalid(format!("this server has no {} port", if tls { "HTTPS" } else { "vhost" }))
        })?;
        if tls && !http.locations.is_empty() {
            return Err(RegisterOutcome::Invalid("TLS is passed through: an HTTPS service has no `locations`".into()));
        }
        check_http(http).map_err(|e| RegisterOutcome::Invalid(e.to_string()))?;
        let hosts = self.allowed_hosts(http, entry)?;
        let locations = if http.locations.is_empty() { vec!["/".to_owned()] } else { http.locations.clone() };
        let template = Template {
            tls,
            bridge: kind == ServiceKind::Ws,
            target: RouteTarget::Service(upstream),
            host_rewrite: http.host_header_rewrite.clone(),
            authorization: http.basic_auth.as_ref().map(|a| basic_authorization(&a.user, &a.password)),
        };
        let owner = RouteOwner::Session(session.id);
        let handle =
            self.routes.claim(owner, &template, (&hosts, &locations), MAX_ROUTES_PER_CLIENT).map_err(|refused| {
                match refused {
                    Refused::HostTaken(host) => RegisterOutcome::HostTaken(host),
                    Refused::Routed(route) => RegisterOutcome::RouteTaken(route),
                    too_many @ Refused::TooMany(_) => RegisterOutcome::Invalid(format!("{too_many} for one client")),
                }
            })?;
        Ok((Owner::Routes(handle), RegisterOutcome::Ok { port }))
    }

    /// The host names `http` claims (its custom domains, and its subdomain as the full name it
    /// becomes), if `entry` allows every one of them.
    pub(super) fn allowed_hosts(&self, http: &HttpSpec, entry: &ClientEntry) -> Result<Vec<String>, RegisterOutcome> {
        let mut hosts = http.custom_domains.clone();
        if let Some(sub) = &http.subdomain {
            let Some(base) = &self.vhost.subdomain_host else {
                return Err(RegisterOutcome::DomainNotAllowed(sub.clone()));
            };
            hosts.push(format!("{sub}.{base}"));
        }
        match hosts.iter().find(|h| !entry.allows_domain(h)) {
            Some(host) => Err(RegisterOutcome::DomainNotAllowed(host.clone())),
            None => Ok(hosts),
        }
    }
}
