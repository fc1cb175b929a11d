//! The client's `[[forwards]]`: a local port whose traffic leaves from the server toward a
//! target (`tcp`, the default, or `udp`), or whose connections become WebSocket connections to
//! a URL (`ws`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::Target;

use crate::{ConfigError, invalid};

/// The keys of a forward, whatever its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFields {
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// `host:port` the server dials (or, for UDP, sends to); for `ws`, a `ws://` URL.
    pub target: Spanned<String>,
}

/// One `[[forwards]]` entry as written, by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardFile {
    /// `type = "tcp"`.
    Tcp(ForwardFields),
    /// `type = "udp"`.
    Udp(ForwardFields),
    /// `type = "ws"`.
    Ws(ForwardFields),
}

/// A validated local forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    /// Local listen address.
    pub listen: SocketAddr,
    /// Where its traffic goes.
    #[serde(flatten)]
    pub kind: ForwardKind,
}

/// Where a forward's traffic goes, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ForwardKind {
    /// TCP connections, dialed by the server.
    Tcp {
        /// `host:port` dialed from the server.
        target: Target,
    },
    /// UDP flows, sent by the server.
    Udp {
        /// `host:port` the server sends to.
        target: Target,
    },
    /// TCP connections carried as WebSocket connections to a URL, directly (not through the
    /// tunnel).
    Ws {
        /// A `ws://host[:port]/path` URL.
        target: String,
    },
}

impl ForwardFile {
    /// Validates the entry.
    pub(crate) fn validate(self, src: &str) -> Result<Forward, ConfigError> {
        let target =
            |f: &ForwardFields| crate::target(src, "forwards.target", f.target.span().start, f.target.get_ref());
        let (listen, kind) = match self {
            Self::Tcp(f) => (f.listen, ForwardKind::Tcp { target: target(&f)? }),
            Self::Udp(f) => (f.listen, ForwardKind::Udp { target: target(&f)? }),
            Self::Ws(f) => {
                let at = f.target.span().start;
                let url = f.target.into_inner();
                if url.strip_prefix("ws://").is_none_or(str::is_empty) {
                    return Err(invalid(src, "forwards.target", Some(at), "a \"ws\" forward's target is a ws:// URL"));
                }
                (f.listen, ForwardKind::Ws { target: url })
            }
        };
        Ok(Forward { listen, kind })
    }
}
