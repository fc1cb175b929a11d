//! Private services on both sides: a service's `secret_key` and `allow_visitors` (which make it
//! private, [`PrivateAccess`]), and the client's `[[visitors]]`, each a local port whose
//! connections reach another client's private service ([`Visitor`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wmproxy_wire::private::MAX_ALLOWED_VISITORS;
use wmproxy_wire::{Name, PrivateSpec, ServiceKind, Verifier};

use crate::secret::Secret;
use crate::{ConfigError, invalid};

/// Who may visit a private service: every restriction set must hold, and at least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrivateAccess {
    /// Visitors must know this secret (the server sees only a value derived from it).
    pub secret_key: Option<Secret>,
    /// Visitors must be one of these clients, if any are listed.
    pub allow_visitors: Vec<Name>,
}

impl PrivateAccess {
    /// The access a TCP service's `secret_key` and `allow_visitors` give (written at `at`),
    /// or `None` when neither is set: the service is then public.
    pub(crate) fn check(
        src: &str,
        at: usize,
        secret_key: Option<Secret>,
        allow_visitors: Vec<Spanned<String>>,
    ) -> Result<Option<Self>, ConfigError> {
        if secret_key.is_none() && allow_visitors.is_empty() {
            return Ok(None);
        }
        if allow_visitors.len() > MAX_ALLOWED_VISITORS {
            let m = format!("at most {MAX_ALLOWED_VISITORS} client names");
            return Err(invalid(src, "services.allow_visitors", Some(at), &m));
        }
        let allow_visitors = allow_visitors
            .into_iter()
            .map(|n| crate::name(src, "services.allow_visitors", n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self { secret_key, allow_visitors }))
    }

    /// What the server is told of it, for `service` of `client`: the verifier, never the
    /// secret.
    pub fn spec(&self, client: &str, service: &str) -> PrivateSpec {
        PrivateSpec {
            verifier: self.secret_key.as_ref().map(|s| Verifier::derive(s.expose().as_bytes(), client, service)),
            allow: self.allow_visitors.clone(),
        }
    }
}

/// The keys of a `[[visitors]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitorFields {
    /// Unique among this client's visitors (status, logs, metrics).
    pub name: Spanned<String>,
    /// The client that publishes the service.
    pub client: Spanned<String>,
    /// The private service's name on that client.
    pub service: Spanned<String>,
    /// The service's secret, if it has one.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// How connections reach the service: `auto` (default), `direct` or `relay`.
    #[serde(default)]
    pub mode: VisitMode,
}

/// How a visitor's connections reach the private service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VisitMode {
    /// A direct connection to the service's client when one can be made, else through the
    /// server.
    #[default]
    Auto,
    /// Only a direct connection: while there is none, connections are refused.
    Direct,
    /// Always through the server.
    Relay,
}

impl VisitMode {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Direct => "direct",
            Self::Relay => "relay",
        }
    }
}

/// One `[[visitors]]` entry as written, by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisitorFile {
    /// `type = "tcp"` (the default).
    Tcp(VisitorFields),
    /// `type = "udp"`: each local sender address is one flow.
    Udp(VisitorFields),
}

/// A validated visitor: a local TCP (or UDP) port whose connections (flows) reach `service`
/// of `client`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Visitor {
    /// Its name.
    pub name: Name,
    /// TCP or UDP: what the local port and the service are.
    #[serde(rename = "type")]
    pub kind: ServiceKind,
    /// Local listen address.
    pub listen: SocketAddr,
    /// The client that publishes the service.
    pub client: Name,
    /// The service.
    pub service: Name,
    /// The service's secret, if it has one.
    pub secret_key: Option<Secret>,
    /// How its connections reach the service.
    pub mode: VisitMode,
}

impl Visitor {
    /// The value shown to the server for the service, if the visitor has a secret.
    pub fn verifier(&self) -> Option<Verifier> {
        self.secret_key
            .as_ref()
            .map(|s| Verifier::derive(s.expose().as_bytes(), self.client.as_str(), self.service.as_str()))
    }
}

impl VisitorFile {
    /// Where the entry's name is written.
    pub(crate) fn name_span(&self) -> std::ops::Range<usize> {
        match self {
            Self::Tcp(f) | Self::Udp(f) => f.name.span(),
        }
    }

    /// Validates the entry.
    pub(crate) fn validate(self, src: &str) -> Result<Visitor, ConfigError> {
        let (kind, f) = match self {
            Self::Tcp(f) => (ServiceKind::Tcp, f),
            Self::Udp(f) => (ServiceKind::Udp, f),
        };
        Ok(Visitor {
            name: crate::name(src, "visitors.name", f.name)?,
            kind,
            listen: f.listen,
            client: crate::name(src, "visitors.client", f.client)?,
            service: crate::name(src, "visitors.service", f.service)?,
            secret_key: f.secret_key,
            mode: f.mode,
        })
    }
}
