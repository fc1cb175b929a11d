//! What the client and the wire read off a service's [`Exposure`]: its kind, its group, and
//! the settings only some kinds have.

use wmproxy_wire::ServiceKind;

use crate::group::GroupJoin;
use crate::service::{Exposure, ProxyProtocol, Publish};

impl Exposure {
    /// The kind, as the wire and the server's groups name it.
    pub fn kind(&self) -> ServiceKind {
        match self {
            Self::Tcp { .. } => ServiceKind::Tcp,
            Self::Udp { .. } => ServiceKind::Udp,
            Self::Http { .. } => ServiceKind::Http,
            Self::Https { .. } => ServiceKind::Https,
            Self::Ws { .. } => ServiceKind::Ws,
        }
    }

    /// The group it joins, if it is a group's backend.
    pub fn group(&self) -> Option<&GroupJoin> {
        match self {
            Self::Tcp { publish: Publish::Group(g), .. }
            | Self::Udp { publish: Publish::Group(g), .. }
            | Self::Http { publish: Publish::Group(g), .. }
            | Self::Https { publish: Publish::Group(g), .. }
            | Self::Ws { publish: Publish::Group(g), .. } => Some(g),
            _ => None,
        }
    }

    /// How long a TCP service's connection may go without a byte either way, if limited.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Self::Tcp { idle_timeout_secs, .. } => idle_timeout_secs.map(std::time::Duration::from_secs),
            _ => None,
        }
    }

    /// Bytes per second each way for a TCP or UDP service, if limited.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        match self {
            Self::Tcp { bandwidth_limit, .. } | Self::Udp { bandwidth_limit, .. } => *bandwidth_limit,
            _ => None,
        }
    }

    /// The PROXY protocol header the client sends the service, if any.
    pub fn proxy_protocol(&self) -> Option<ProxyProtocol> {
        match self {
            Self::Udp { .. } => None,
            Self::Tcp { proxy_protocol, .. }
            | Self::Http { proxy_protocol, .. }
            | Self::Https { proxy_protocol, .. }
            | Self::Ws { proxy_protocol, .. } => *proxy_protocol,
        }
    }
}
