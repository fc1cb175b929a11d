//! The client's `[[services]]`: what it publishes on the server. Each kind (`type`, `tcp` when
//! left out) takes only its own keys; see the crate docs for how the tag is read.

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::{Name, ServiceKind, Target, routes};

use crate::byterate::ByteRate;
use crate::group::{GroupJoin, HealthCheck};
use crate::ranges::{self, Index, Key, within};
use crate::secret::Secret;
use crate::vhost::{Hosts, HttpRoute, WsRoute, normalize_host};
use crate::visitor::PrivateAccess;
use crate::{ConfigError, invalid};

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 …`).
    V1,
    /// The binary header.
    V2,
}

/// Writes one kind's file struct: the keys every service has, then the kind's own.
macro_rules! service_file {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Unique name within this client.
            pub name: Spanned<String>,
            /// Where the service listens, reachable from the client (`host:port`).
            pub local_addr: String,
            /// Join this load-balancing group of the server instead of publishing on its own.
            #[serde(default)]
            pub group: Option<Spanned<String>>,
            /// The group's key.
            #[serde(default)]
            pub group_key: Option<Secret>,
            /// Share of the group's work relative to other backends (default 1).
            #[serde(default)]
            pub weight: Option<u32>,
            /// Join drained: no new work (for maintenance).
            #[serde(default)]
            pub drain: bool,
            /// Active health check, run here and reported to the server.
            #[serde(default)]
            pub health_check: Option<HealthCheck>,
            /// Log one line per finished connection (user, bytes each way, duration, result);
            /// on by default.
            #[serde(default)]
            pub access_log: Option<bool>,
            $($(#[$fdoc])* #[serde(default)] pub $field: $ty,)*
        }

        impl $name {
            fn common(&self, src: &str, index: usize, kind: ServiceKind) -> Result<Common, ConfigError> {
                Common::check(src, (index, kind), CommonFile {
                    name: &self.name,
                    local_addr: &self.local_addr,
                    group: self.group.as_ref(),
                    group_key: self.group_key.as_ref(),
                    weight: self.weight,
                    drain: self.drain,
                    health_check: self.health_check.as_ref(),
                    access_log: self.access_log,
                })
            }
        }
    };
}

service_file! {
    /// `type = "tcp"` (the default): a TCP port on the server.
    TcpServiceFile {
        /// Public port on the server; 0 (the default) lets the server choose. Not with `group`.
        remote_port: u16,
        /// Send a PROXY protocol header (`"v1"` or `"v2"`) to the service before the user's bytes.
        proxy_protocol: Option<ProxyProtocol>,
        /// Bytes per second each way, over all its connections (`"1MB"`); off when unset.
        bandwidth_limit: Option<ByteRate>,
        /// A connection with no byte either way for this many seconds is aborted; off when
        /// unset.
        idle_timeout_secs: Option<u64>,
        /// Publish privately: no public port; visitors (`[[visitors]]` of other clients) must
        /// know this secret.
        secret_key: Option<Secret>,
        /// Publish privately: no public port; only these clients may visit.
        allow_visitors: Vec<Spanned<String>>,
    }
}

service_file! {
    /// `type = "udp"`: a UDP port on the server, carried as QUIC datagrams.
    UdpServiceFile {
        /// Public port on the server; 0 (the default) lets the server choose. Not with `group`.
        remote_port: u16,
        /// Bytes per second each way, over all its flows (`"1MB"`); packets over it are
        /// dropped. Off when unset.
        bandwidth_limit: Option<ByteRate>,
        /// Publish privately: no public port; visitors must know this secret.
        secret_key: Option<Secret>,
        /// Publish privately: no public port; only these clients may visit.
        allow_visitors: Vec<Spanned<String>>,
    }
}

service_file! {
    /// `type = "http"`: host names (and paths) on the server's vhost port.
    HttpServiceFile {
        /// Host names served.
        custom_domains: Vec<String>,
        /// Served at `<subdomain>.<the server's subdomain_host>`.
        subdomain: Option<String>,
        /// Path prefixes served (all paths when empty); the longest match wins.
        locations: Vec<String>,
        /// The `Host` header the service sees.
        host_header_rewrite: Option<String>,
        /// Require HTTP Basic auth with this user name (and `http_password`).
        http_user: Option<String>,
        /// The password for `http_user`.
        http_password: Option<Secret>,
        /// Send a PROXY protocol header to the service.
        proxy_protocol: Option<ProxyProtocol>,
    }
}

service_file! {
    /// `type = "https"`: host names on the server's HTTPS port, by SNI; TLS passes through.
    HttpsServiceFile {
        /// Host names served.
        custom_domains: Vec<String>,
        /// Served at `<subdomain>.<the server's subdomain_host>`.
        subdomain: Option<String>,
        /// Send a PROXY protocol header to the service.
        proxy_protocol: Option<ProxyProtocol>,
    }
}

service_file! {
    /// `type = "ws"`: a TCP service published as a WebSocket endpoint on the vhost port (one
    /// WebSocket connection ↔ one TCP connection, binary messages).
    WsServiceFile {
        /// Host names served.
        custom_domains: Vec<String>,
        /// Served at `<subdomain>.<the server's subdomain_host>`.
        subdomain: Option<String>,
        /// Path prefixes served (all paths when empty).
        locations: Vec<String>,
        /// Send a PROXY protocol header to the service.
        proxy_protocol: Option<ProxyProtocol>,
    }
}

/// One `[[services]]` entry as written, by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceFile {
    /// `type = "tcp"`.
    Tcp(TcpServiceFile),
    /// `type = "udp"`.
    Udp(UdpServiceFile),
    /// `type = "http"`.
    Http(HttpServiceFile),
    /// `type = "https"`.
    Https(HttpsServiceFile),
    /// `type = "ws"`.
    Ws(WsServiceFile),
}

/// A validated service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Unique name.
    pub name: Name,
    /// Where the client reaches it.
    pub local_addr: Target,
    /// Log each finished connection.
    pub access_log: bool,
    /// Its kind, and how the server publishes it.
    #[serde(flatten)]
    pub exposure: Exposure,
}

/// A service's own publication (a port, host names), or its place in a server's group (which
/// has the port or the host names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Publish<R> {
    /// Its own port or routes.
    Own(R),
    /// A backend of this group.
    Group(GroupJoin),
    /// No public port or routes: reachable only by the visitors this admits.
    Private(PrivateAccess),
}

/// A service's kind, with exactly what that kind needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Exposure {
    /// A TCP port (0: the server picks).
    Tcp {
        /// The requested public port, or the group.
        publish: Publish<u16>,
        /// The PROXY header sent to the service, if any.
        proxy_protocol: Option<ProxyProtocol>,
        /// Bytes per second each way, if limited.
        bandwidth_limit: Option<u64>,
        /// Seconds a connection may go without a byte either way, if limited.
        idle_timeout_secs: Option<u64>,
    },
    /// A UDP port (0: the server picks).
    Udp {
        /// The requested public port, or the group.
        publish: Publish<u16>,
        /// Bytes per second each way, if limited.
        bandwidth_limit: Option<u64>,
    },
    /// Host names and paths on the vhost port.
    Http {
        /// Its routes, or the group.
        publish: Publish<HttpRoute>,
        /// The PROXY header sent to the service, if any.
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// Host names on the HTTPS port (TLS passed through).
    Https {
        /// Its host names, or the group.
        publish: Publish<Hosts>,
        /// The PROXY header sent to the service, if any.
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// A WebSocket endpoint on the vhost port, bridged to a TCP service.
    Ws {
        /// Its routes, or the group.
        publish: Publish<WsRoute>,
        /// The PROXY header sent to the service, if any.
        proxy_protocol: Option<ProxyProtocol>,
    },
}

/// The keys every kind has, borrowed for checking.
struct CommonFile<'a> {
    name: &'a Spanned<String>,
    local_addr: &'a str,
    group: Option<&'a Spanned<String>>,
    group_key: Option<&'a Secret>,
    weight: Option<u32>,
    drain: bool,
    health_check: Option<&'a HealthCheck>,
    access_log: Option<bool>,
}

/// The checked keys every kind has.
struct Common {
    name: Name,
    /// Where the name is written: the line errors about the entry name.
    at: usize,
    local_addr: Target,
    access_log: bool,
    join: Option<GroupJoin>,
}

impl Common {
    fn check(src: &str, (index, kind): (usize, ServiceKind), f: CommonFile<'_>) -> Result<Self, ConfigError> {
        let at = f.name.span().start;
        let name = crate::name(src, "services.name", f.name.clone())?;
        let local_addr = crate::target(src, "services.local_addr", at, f.local_addr)?;
        let join = match (f.group, f.group_key) {
            (None, None) if f.health_check.is_none() && f.weight.is_none() && !f.drain => None,
            (None, _) => {
                let m = "`group_key`, `weight`, `drain` and `health_check` need `group`";
                return Err(invalid(src, "services.group", Some(at), m));
            }
            (Some(_), None) => return Err(invalid(src, "services.group_key", Some(at), "`group` needs `group_key`")),
            (Some(group), Some(key)) => {
                let group = crate::name(src, "services.group", group.clone())?;
                if f.weight == Some(0) {
                    return Err(invalid(src, "services.weight", Some(at), "weight must be at least 1"));
                }
                if let Some(m) = f.health_check.and_then(HealthCheck::problem) {
                    return Err(invalid(src, "services.health_check", Some(at), m));
                }
                if let Some(weight) = f.weight {
                    within(src, &[Key("services"), Index(index), Key("weight")], weight, ranges::WEIGHT)?;
                }
                if let Some(check) = f.health_check {
                    check.within_ranges(src, index)?;
                }
                if kind == ServiceKind::Udp && f.health_check.is_some_and(|h| h.addr.is_none()) {
                    let m = "a UDP service's health check needs `addr` (a TCP or HTTP port that tells its health)";
                    return Err(invalid(src, "services.health_check.addr", Some(at), m));
                }
                if let Some(addr) = f.health_check.and_then(|h| h.addr.as_deref()) {
                    crate::target(src, "services.health_check.addr", at, addr)?;
                }
                Some(GroupJoin {
                    group,
                    key: key.clone(),
                    weight: f.weight.unwrap_or(1),
                    drain: f.drain,
                    health_check: f.health_check.cloned(),
                })
            }
        };
        Ok(Self { name, at, local_addr, access_log: f.access_log.unwrap_or(true), join })
    }

    /// A port of its own, or the group's (which has its port on the server).
    fn port(&self, src: &str, remote_port: u16) -> Result<Publish<u16>, ConfigError> {
        match &self.join {
            None => Ok(Publish::Own(remote_port)),
            Some(_) if remote_port != 0 => {
                let m = "a group's port is set on the server; leave `remote_port` out";
                Err(invalid(src, "services.remote_port", Some(self.at), m))
            }
            Some(join) => Ok(Publish::Group(join.clone())),
        }
    }

    /// [`Self::port`], or no port at all when `secret_key` or `allow_visitors` make the service
    /// private (then neither a port nor a group may be given).
    fn port_or_private(
        &self,
        src: &str,
        remote_port: u16,
        (secret_key, allow_visitors): (Option<Secret>, Vec<Spanned<String>>),
    ) -> Result<Publish<u16>, ConfigError> {
        match PrivateAccess::check(src, self.at, secret_key, allow_visitors)? {
            None => self.port(src, remote_port),
            Some(_) if self.join.is_some() => {
                let m = "a private service (`secret_key`, `allow_visitors`) cannot join a group";
                Err(invalid(src, "services.group", Some(self.at), m))
            }
            Some(_) if remote_port != 0 => {
                let m =
                    "a private service (`secret_key`, `allow_visitors`) has no public port; leave `remote_port` out";
                Err(invalid(src, "services.remote_port", Some(self.at), m))
            }
            Some(access) => Ok(Publish::Private(access)),
        }
    }

    /// Routes of its own (`route` builds them once `named` says some were given), or the
    /// group's (which has its host names on the server: then none may be given).
    fn routes<R>(
        &self,
        src: &str,
        named: bool,
        route: impl FnOnce() -> Result<R, ConfigError>,
    ) -> Result<Publish<R>, ConfigError> {
        match &self.join {
            Some(_) if named => {
                let m = "a group's host names and HTTP settings are set on the server; leave them out";
                Err(invalid(src, "services.group", Some(self.at), m))
            }
            Some(join) => Ok(Publish::Group(join.clone())),
            None => route().map(Publish::Own),
        }
    }

    fn into_service(self, exposure: Exposure) -> Service {
        Service { name: self.name, local_addr: self.local_addr, access_log: self.access_log, exposure }
    }
}

/// The host names of an HTTP-like service: at least one, lower-case.
fn hosts(src: &str, at: usize, domains: &[String], subdomain: &Option<String>) -> Result<Hosts, ConfigError> {
    if domains.is_empty() && subdomain.is_none() {
        let m = "an HTTP service needs `custom_domains` or `subdomain`";
        return Err(invalid(src, "services.custom_domains", Some(at), m));
    }
    if domains.len() + usize::from(subdomain.is_some()) > routes::MAX_DOMAINS_PER_SERVICE {
        let m = format!("at most {} host names in one service", routes::MAX_DOMAINS_PER_SERVICE);
        return Err(invalid(src, "services.custom_domains", Some(at), &m));
    }
    let hosts = Hosts {
        custom_domains: domains.iter().map(|d| normalize_host(d)).collect(),
        subdomain: subdomain.as_deref().map(normalize_host),
    };
    for domain in &hosts.custom_domains {
        routes::check_host(domain, true)
            .map_err(|e| invalid(src, "services.custom_domains", Some(at), &e.to_string()))?;
    }
    if let Some(sub) = &hosts.subdomain {
        routes::check_host(sub, false).map_err(|e| invalid(src, "services.subdomain", Some(at), &e.to_string()))?;
    }
    Ok(hosts)
}

/// The path prefixes of an HTTP service, checked as the server checks them.
fn locations(src: &str, at: usize, locations: &[String]) -> Result<Vec<String>, ConfigError> {
    if locations.len() > routes::MAX_LOCATIONS_PER_SERVICE {
        let m = format!("at most {} locations in one service", routes::MAX_LOCATIONS_PER_SERVICE);
        return Err(invalid(src, "services.locations", Some(at), &m));
    }
    for location in locations {
        routes::check_location(location).map_err(|e| invalid(src, "services.locations", Some(at), &e.to_string()))?;
    }
    Ok(locations.to_vec())
}

impl ServiceFile {
    /// Where the entry's name is written.
    pub(crate) fn name_span(&self) -> std::ops::Range<usize> {
        match self {
            Self::Tcp(f) => f.name.span(),
            Self::Udp(f) => f.name.span(),
            Self::Http(f) => f.name.span(),
            Self::Https(f) => f.name.span(),
            Self::Ws(f) => f.name.span(),
        }
    }

    /// Validates the entry, the `index`th of `[[services]]`. `src` is the TOML text, used to
    /// name lines.
    pub(crate) fn validate(self, src: &str, index: usize) -> Result<Service, ConfigError> {
        match self {
            Self::Tcp(f) => {
                let common = f.common(src, index, ServiceKind::Tcp)?;
                let publish = common.port_or_private(src, f.remote_port, (f.secret_key, f.allow_visitors))?;
                let bandwidth_limit = f.bandwidth_limit.map(|b| b.0);
                if let Some(idle) = f.idle_timeout_secs {
                    within(
                        src,
                        &[Key("services"), Index(index), Key("idle_timeout_secs")],
                        idle,
                        ranges::RELAY_IDLE_SECS,
                    )?;
                }
                let (proxy_protocol, idle_timeout_secs) = (f.proxy_protocol, f.idle_timeout_secs);
                Ok(common.into_service(Exposure::Tcp { publish, proxy_protocol, bandwidth_limit, idle_timeout_secs }))
            }
            Self::Udp(f) => {
                let common = f.common(src, index, ServiceKind::Udp)?;
                let publish = common.port_or_private(src, f.remote_port, (f.secret_key, f.allow_visitors))?;
                Ok(common.into_service(Exposure::Udp { publish, bandwidth_limit: f.bandwidth_limit.map(|b| b.0) }))
            }
            Self::Http(f) => {
                let common = f.common(src, index, ServiceKind::Http)?;
                let named = !f.custom_domains.is_empty() || f.subdomain.is_some() || !f.locations.is_empty();
                let settings = f.host_header_rewrite.is_some() || f.http_user.is_some() || f.http_password.is_some();
                let at = common.at;
                let publish = common.routes(src, named || settings, || {
                    let hosts = hosts(src, at, &f.custom_domains, &f.subdomain)?;
                    let basic_auth = match (f.http_user, f.http_password) {
                        (None, None) => None,
                        (Some(user), Some(password)) => Some((user, password)),
                        _ => {
                            let m = "set both `http_user` and `http_password`, or neither";
                            return Err(invalid(src, "services.http_user", Some(at), m));
                        }
                    };
                    Ok(HttpRoute {
                        custom_domains: hosts.custom_domains,
                        subdomain: hosts.subdomain,
                        locations: locations(src, at, &f.locations)?,
                        host_header_rewrite: f.host_header_rewrite,
                        basic_auth,
                    })
                })?;
                Ok(common.into_service(Exposure::Http { publish, proxy_protocol: f.proxy_protocol }))
            }
            Self::Https(f) => {
                let common = f.common(src, index, ServiceKind::Https)?;
                let named = !f.custom_domains.is_empty() || f.subdomain.is_some();
                let at = common.at;
                let publish = common.routes(src, named, || hosts(src, at, &f.custom_domains, &f.subdomain))?;
                Ok(common.into_service(Exposure::Https { publish, proxy_protocol: f.proxy_protocol }))
            }
            Self::Ws(f) => {
                let common = f.common(src, index, ServiceKind::Ws)?;
                let named = !f.custom_domains.is_empty() || f.subdomain.is_some() || !f.locations.is_empty();
                let at = common.at;
                let publish = common.routes(src, named, || {
                    let hosts = hosts(src, at, &f.custom_domains, &f.subdomain)?;
                    Ok(WsRoute {
                        custom_domains: hosts.custom_domains,
                        subdomain: hosts.subdomain,
                        locations: locations(src, at, &f.locations)?,
                    })
                })?;
                Ok(common.into_service(Exposure::Ws { publish, proxy_protocol: f.proxy_protocol }))
            }
        }
    }
}
