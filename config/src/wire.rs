//! The one conversion between the config's kinds and the wire's: what the server is asked to
//! publish for a validated [`Service`]. (The kind itself is one type on both sides,
//! [`wmproxy_wire::ServiceKind`].)

use wmproxy_wire::{BasicAuth, GroupKey, GroupMembership, HealthSpec, HttpSpec, ServiceSpec};

use crate::group::GroupJoin;
use crate::service::{Exposure, Publish, Service};

impl Service {
    /// What the server is asked to publish for this service of `client`: the one conversion
    /// between the config's kinds and the wire's. A private service's secret stays here; the
    /// server gets the verifier derived from it.
    pub fn spec(&self, client: &str) -> ServiceSpec {
        let service = self;
        let mut spec = ServiceSpec {
            name: service.name.clone(),
            kind: service.exposure.kind(),
            remote_port: 0,
            group: service.exposure.group().map(GroupMembership::from),
            http: None,
            bandwidth_limit: service.exposure.bandwidth_limit(),
            private: None,
        };
        match &service.exposure {
            Exposure::Tcp { publish: Publish::Private(access), .. }
            | Exposure::Udp { publish: Publish::Private(access), .. } => {
                spec.private = Some(access.spec(client, service.name.as_str()));
            }
            Exposure::Tcp { publish: Publish::Own(port), .. } | Exposure::Udp { publish: Publish::Own(port), .. } => {
                spec.remote_port = *port;
            }
            Exposure::Http { publish: Publish::Own(route), .. } => {
                spec.http = Some(HttpSpec {
                    custom_domains: route.custom_domains.clone(),
                    subdomain: route.subdomain.clone(),
                    locations: route.locations.clone(),
                    host_header_rewrite: route.host_header_rewrite.clone(),
                    basic_auth: route.basic_auth.as_ref().map(|(user, password)| BasicAuth {
                        user: user.clone(),
                        password: password.expose().to_owned(),
                    }),
                });
            }
            Exposure::Https { publish: Publish::Own(hosts), .. } => {
                spec.http = Some(http_spec(&hosts.custom_domains, &hosts.subdomain, &[]));
            }
            Exposure::Ws { publish: Publish::Own(route), .. } => {
                spec.http = Some(http_spec(&route.custom_domains, &route.subdomain, &route.locations));
            }
            _ => {}
        }
        spec
    }
}

fn http_spec(domains: &[String], subdomain: &Option<String>, locations: &[String]) -> HttpSpec {
    HttpSpec {
        custom_domains: domains.to_vec(),
        subdomain: subdomain.clone(),
        locations: locations.to_vec(),
        host_header_rewrite: None,
        basic_auth: None,
    }
}

impl From<&GroupJoin> for GroupMembership {
    fn from(join: &GroupJoin) -> Self {
        GroupMembership {
            group: join.group.clone(),
            key: GroupKey(join.key.expose().to_owned()),
            weight: join.weight,
            drain: join.drain,
            health: join.health_check.as_ref().map(|h| HealthSpec {
                rise: h.rise,
                fall: h.fall,
                start_healthy: h.start_healthy,
            }),
        }
    }
}
