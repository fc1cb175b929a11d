//! Load-balancing groups: `[[groups]]` on the server (a public port served by several
//! backends), and how a client's `[[services]]` entry joins one, with its health check.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::{Name, ServiceKind, routes};

use crate::ranges::{self, Index, Key, within};
use crate::secret::Secret;
use crate::vhost::{VhostFile, normalize_host};
use crate::{ConfigError, invalid};

/// How a group picks the backend for a new connection or flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (nginx): shares follow the weights, evenly interleaved.
    WeightedRoundRobin,
    /// The backend with the fewest active connections per unit of weight.
    LeastConnections,
    /// Consistent hash of the user's IP address: a user sticks to a backend, and a backend
    /// leaving moves only its own users.
    IpHash,
}

/// Writes one kind's group file struct: the keys every group has, then the kind's own.
macro_rules! group_file {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// The group's name, as clients name it in `group`.
            pub name: Spanned<String>,
            /// What a client must send as `group_key` to join.
            pub key: Secret,
            /// How a backend is picked.
            #[serde(default)]
            pub policy: Policy,
            /// Passive check: this many failed dials within `fail_timeout_secs` eject a backend
            /// for `fail_timeout_secs`. `0` turns passive checks off.
            #[serde(default = "default_max_fails")]
            pub max_fails: u32,
            /// The window and the ejection time of the passive check.
            #[serde(default = "default_fail_timeout_secs")]
            pub fail_timeout_secs: u64,
            /// Further backends tried when a dial fails before any byte was relayed.
            #[serde(default = "default_retries")]
            pub retries: u32,
            $($(#[$fdoc])* #[serde(default)] pub $field: $ty,)*
        }

        impl $name {
            fn entry(&self, src: &str, index: usize, kind: GroupKind) -> Result<GroupEntry, ConfigError> {
                let at = Some(self.name.span().start);
                let key = |key| [Key("groups"), Index(index), Key(key)];
                within(src, &key("max_fails"), self.max_fails, ranges::MAX_FAILS)?;
                within(src, &key("fail_timeout_secs"), self.fail_timeout_secs, ranges::FAIL_TIMEOUT_SECS)?;
                within(src, &key("retries"), self.retries, ranges::RETRIES)?;
                if self.max_fails > 0 && self.fail_timeout_secs == 0 {
                    return Err(invalid(src, "groups.fail_timeout_secs", at, "must be at least 1 when max_fails is set"));
                }
                Ok(GroupEntry {
                    name: crate::name(src, "groups.name", self.name.clone())?,
                    key: self.key.clone(),
                    policy: self.policy,
                    max_fails: self.max_fails,
                    fail_timeout_secs: self.fail_timeout_secs,
                    retries: self.retries,
                    kind,
                })
            }
        }
    };
}

group_file! {
    /// `type = "tcp"` (the default) or `"udp"`: a public port, bound at server start.
    PortGroupFile {
        /// The public port on `public_bind`.
        remote_port: u16,
    }
}

group_file! {
    /// `type = "http"`: host names (and paths) on the vhost port.
    HttpGroupFile {
        /// The host names (`example.com`, `*.example.com`). They are the operator's, so no
        /// client's `allow_domains` applies.
        custom_domains: Vec<String>,
        /// Path prefixes served (`/` when empty).
        locations: Vec<String>,
    }
}

group_file! {
    /// `type = "https"`: host names on the HTTPS port, by SNI; TLS passes through.
    HttpsGroupFile {
        /// The host names.
        custom_domains: Vec<String>,
    }
}

/// One `[[groups]]` entry as written, by its `type`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupFile {
    /// `type = "tcp"`.
    Tcp(PortGroupFile),
    /// `type = "udp"`.
    Udp(PortGroupFile),
    /// `type = "http"`.
    Http(HttpGroupFile),
    /// `type = "https"`.
    Https(HttpsGroupFile),
}

fn default_max_fails() -> u32 {
    1
}
fn default_fail_timeout_secs() -> u64 {
    10
}
fn default_retries() -> u32 {
    2
}

/// A validated group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupEntry {
    /// Its name.
    pub name: Name,
    /// The key members join with.
    pub key: Secret,
    /// How a backend is picked.
    pub policy: Policy,
    /// Passive check: failed dials that eject a backend (`0`: off).
    pub max_fails: u32,
    /// The passive check's window and ejection time, seconds.
    pub fail_timeout_secs: u64,
    /// Further backends tried when a dial fails.
    pub retries: u32,
    /// Where it is served.
    #[serde(flatten)]
    pub kind: GroupKind,
}

/// Where a group is served, by its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GroupKind {
    /// A public TCP port.
    Tcp {
        /// The port.
        remote_port: u16,
    },
    /// A public UDP port.
    Udp {
        /// The port.
        remote_port: u16,
    },
    /// Host names and paths on the vhost port.
    Http {
        /// Host names, lower-case.
        custom_domains: Vec<String>,
        /// Path prefixes (`/` when empty).
        locations: Vec<String>,
    },
    /// Host names on the HTTPS port.
    Https {
        /// Host names, lower-case.
        custom_domains: Vec<String>,
    },
}

impl GroupKind {
    /// The kind of service that may join.
    pub fn service_kind(&self) -> ServiceKind {
        match self {
            Self::Tcp { .. } => ServiceKind::Tcp,
            Self::Udp { .. } => ServiceKind::Udp,
            Self::Http { .. } => ServiceKind::Http,
            Self::Https { .. } => ServiceKind::Https,
        }
    }

    /// Its public port, for TCP and UDP groups.
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Tcp { remote_port } | Self::Udp { remote_port } => Some(*remote_port),
            Self::Http { .. } | Self::Https { .. } => None,
        }
    }
}

impl GroupEntry {
    /// [`Self::fail_timeout_secs`] as a duration.
    pub fn fail_timeout(&self) -> Duration {
        Duration::from_secs(self.fail_timeout_secs)
    }
}

impl GroupFile {
    /// Where the entry's name is written.
    pub(crate) fn name(&self) -> &Spanned<String> {
        match self {
            Self::Tcp(f) | Self::Udp(f) => &f.name,
            Self::Http(f) => &f.name,
            Self::Https(f) => &f.name,
        }
    }

    /// Validates the entry; `vhost` says which ports HTTP groups can be served on.
    pub(crate) fn validate(self, src: &str, index: usize, vhost: &VhostFile) -> Result<GroupEntry, ConfigError> {
        let at = Some(self.name().span().start);
        let lower = |domains: &[String]| domains.iter().map(|d| normalize_host(d)).collect::<Vec<_>>();
        let needs_hosts = |domains: &[String]| {
            if domains.is_empty() {
                return Err(invalid(src, "groups.custom_domains", at, "an HTTP group needs its host names"));
            }
            lower(domains).iter().try_for_each(|d| {
                routes::check_host(d, true).map_err(|e| invalid(src, "groups.custom_domains", at, &e.to_string()))
            })
        };
        match &self {
            Self::Tcp(f) | Self::Udp(f) => {
                if f.remote_port == 0 {
                    return Err(invalid(src, "groups.remote_port", at, "a group needs a fixed public port"));
                }
                let kind = match self {
                    Self::Udp(_) => GroupKind::Udp { remote_port: f.remote_port },
                    _ => GroupKind::Tcp { remote_port: f.remote_port },
                };
                f.entry(src, index, kind)
            }
            Self::Http(f) => {
                needs_hosts(&f.custom_domains)?;
                for location in &f.locations {
                    routes::check_location(location)
                        .map_err(|e| invalid(src, "groups.locations", at, &e.to_string()))?;
                }
                if vhost.http_routes_bind().is_none() {
                    let m = "this group needs `[vhost] http_bind` (or `https_bind` with `[vhost.tls]`)";
                    return Err(invalid(src, "groups.type", at, m));
                }
                let kind = GroupKind::Http { custom_domains: lower(&f.custom_domains), locations: f.locations.clone() };
                f.entry(src, index, kind)
            }
            Self::Https(f) => {
                needs_hosts(&f.custom_domains)?;
                if vhost.https_bind.is_none() {
                    return Err(invalid(src, "groups.type", at, "this group needs `[vhost] https_bind`"));
                }
                f.entry(src, index, GroupKind::Https { custom_domains: lower(&f.custom_domains) })
            }
        }
    }
}

/// What kind of active check a backend gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// A TCP connect to the backend.
    #[default]
    Tcp,
    /// An HTTP/1.1 `GET` of `path`; healthy when the status is in `expect_status`.
    Http,
}

/// `[services.health_check]`: an active check the client runs against its backend and reports
/// to the server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `"tcp"` (default) or `"http"`.
    #[serde(default, rename = "type")]
    pub kind: CheckType,
    /// Where to check; defaults to the service's `local_addr` (set it for a UDP service).
    #[serde(default)]
    pub addr: Option<String>,
    /// HTTP: the path to `GET`.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP: the `Host` header (default: the address checked).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP: statuses that count as healthy; empty means any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Milliseconds between checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Milliseconds a check may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy backend healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Healthy from the start instead of after the first `rise` successes.
    #[serde(default)]
    pub start_healthy: bool,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl HealthCheck {
    /// Whether `status` counts as healthy.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expect_status.is_empty() { (200..300).contains(&status) } else { self.expect_status.contains(&status) }
    }
    /// [`Self::interval_ms`] as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    /// [`Self::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// Checks every number of the check of the `index`th service against its range.
    pub(crate) fn within_ranges(&self, src: &str, index: usize) -> Result<(), ConfigError> {
        let key = |key| [Key("services"), Index(index), Key("health_check"), Key(key)];
        within(src, &key("interval_ms"), self.interval_ms, ranges::CHECK_INTERVAL_MS)?;
        within(src, &key("timeout_ms"), self.timeout_ms, ranges::CHECK_TIMEOUT_MS)?;
        within(src, &key("rise"), self.rise, ranges::RISE_FALL)?;
        within(src, &key("fall"), self.fall, ranges::RISE_FALL)?;
        for (i, status) in self.expect_status.iter().enumerate() {
            let path = [Key("services"), Index(index), Key("health_check"), Key("expect_status"), Index(i)];
            within(src, &path, *status, ranges::HTTP_STATUS)?;
        }
        Ok(())
    }

    /// The first problem with the values, if any.
    pub fn problem(&self) -> Option<&'static str> {
        if self.interval_ms == 0 || self.timeout_ms == 0 {
            return Some("interval_ms and timeout_ms must be at least 1");
        }
        if self.rise == 0 || self.fall == 0 {
            return Some("rise and fall must be at least 1");
        }
        if !self.path.starts_with('/') {
            return Some("path must start with `/`");
        }
        None
    }
}

/// How a client service joins a group (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupJoin {
    /// The group's name.
    pub group: Name,
    /// Its key.
    pub key: Secret,
    /// Relative share of work (at least 1).
    pub weight: u32,
    /// Joins drained: keeps current connections, gets no new ones.
    pub drain: bool,
    /// The active check, if any. Without one the backend is healthy unless passive checks
    /// eject it.
    pub health_check: Option<HealthCheck>,
}
