//! wmproxy configuration: TOML files, their defaults, and validation into runtime types.
//!
//! # Layout
//! - [`server`]: `ServerFile` (the file as written) → [`ServerConfig`] (validated).
//! - [`client`]: `ClientFile` → [`ClientConfig`]; [`service`]: the client's `[[services]]`
//!   (`exposure`: what is read off a service's kind; [`byterate`]: `bandwidth_limit` values).
//! - [`group`]: load-balancing groups (server side) and how a service joins one, with its
//!   health check (client side).
//! - [`forward`]: the client's `[[forwards]]`. [`proxy`]: SOCKS5 and HTTP proxies of either end.
//! - [`visitor`]: private services (`secret_key`, `allow_visitors`) and the client's
//!   `[[visitors]]`, which reach them.
//! - [`vhost`]: the server's HTTP virtual-host port and the routes HTTP services ask for.
//! - [`ports`]: public port allowances. [`egress`]: which targets an end may dial.
//! - [`Congestion`]: the `[limits] congestion` key of either end.
//! - [`secret`]: tokens, masked in `Debug`, `Display` and `Serialize`.
//! - [`now`]: the running config written back as its file (`GET /now`).
//! - [`control`]: `[control]`, the control API of either end. [`reload`]: the report of what a
//!   reload changed. [`ranges`]: the valid range of every number.
//! - `tagged`: how an entry's `type` selects its kind (see below). `wire`: the one conversion of
//!   a service into what the server is asked to publish. `help`: what errors say of the file
//!   (every missing key at once) and of a key (what it is for, what it takes).
//!
//! # How a file becomes a config
//! Text → `toml`'s span-keeping document → `help` checks its shape (required keys, lists
//! written as lists) → `tagged` turns each `[[services]]`, `[[forwards]]`, `[[visitors]]`,
//! `[[groups]]` and `[[proxies]]` entry into an enum value tagged by its `type` (`tcp` when left
//! out, except proxies) → serde fills the `*File` types, each kind a struct of only its own keys
//! (`deny_unknown_fields`: a TCP service with `custom_domains` is refused there, with the key
//! and the line) → `validate` checks what spans fields (duplicates, exactly one trust option)
//! and builds the runtime types, which cannot be half-set: a kind's variant holds exactly what
//! it needs, names are [`wmproxy_wire::Name`]s and addresses [`wmproxy_wire::Target`]s. Every
//! error names the key and the line.
#![forbid(unsafe_code)]

pub mod byterate;
pub mod client;
mod congestion;
pub mod control;
pub mod egress;
mod exposure;
pub mod forward;
pub mod group;
mod help;
pub mod now;
pub mod ports;
pub mod proxy;
pub mod ranges;
pub mod reload;
pub mod secret;
pub mod server;
pub mod servers;
pub mod service;
mod tagged;
pub mod tcp_proxy;
pub mod vhost;
pub mod visitor;
mod wire;

use std::path::{Path, PathBuf};

pub use client::{ClientConfig, ClientFile, ClientLimits, Transport};
pub use congestion::Congestion;
pub use control::ControlFile;
pub use egress::EgressPolicy;
pub use forward::{Forward, ForwardKind};
pub use group::{CheckType, GroupEntry, GroupFile, GroupJoin, GroupKind, HealthCheck, Policy};
pub use ports::{PortAllowance, PortRange};
pub use proxy::{Credentials, Proxy, ProxyType, ServerProxy};
pub use reload::ReloadReport;
pub use secret::Secret;
pub use server::{ClientEntry, Limits, ServerConfig, ServerFile, TlsFiles};
pub use servers::{EgressChoice, ServerEntry, ServerTrust, ServersMode};
pub use service::{Exposure, ProxyProtocol, Publish, Service};
pub use vhost::{Hosts, HttpRoute, VhostFile, WsRoute};
pub use wmproxy_wire::{Name, ServiceKind, Target};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key, or a value of the wrong form. toml's message
    /// shows the line and column; the hint names the key, what it is for and what it takes.
    #[error("{}{}", source.to_string().trim_end(), hint.as_ref().map(|h| format!("\n{h}")).unwrap_or_default())]
    Parse {
        /// toml's error.
        #[source]
        source: toml::de::Error,
        /// What the key is for, when known.
        hint: Option<String>,
    },
    /// Keys the file cannot do without are missing: every one of them, at once.
    #[error("the {file} config is missing required keys:\n  - {}", keys.join("\n  - "))]
    Missing {
        /// `client` or `server`.
        file: &'static str,
        /// Each missing key (with its entry's line, for a list entry) and what it is for.
        keys: Vec<String>,
    },
    /// The values parse but do not make a working configuration.
    #[error("{}: `{key}`: {message}", line.map_or_else(|| "config".to_owned(), |l| format!("line {l}")))]
    Invalid {
        /// The offending key.
        key: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Parses and validates a server config from TOML text.
pub fn parse_server(src: &str) -> Result<ServerConfig, ConfigError> {
    parse_server_file(src)?.validate(src)
}

/// Parses a server config from TOML text into the file as written, without validating it.
pub fn parse_server_file(src: &str) -> Result<ServerFile, ConfigError> {
    tagged::parse::<ServerFile>(src, server::TAGGED, &help::SERVER)
}

/// Parses and validates a client config from TOML text.
pub fn parse_client(src: &str) -> Result<ClientConfig, ConfigError> {
    tagged::parse::<ClientFile>(src, client::TAGGED, &help::CLIENT)?.validate(src)
}

/// Reads, parses and validates a server config file.
pub fn load_server(path: &Path) -> Result<ServerConfig, ConfigError> {
    parse_server(&read(path)?)
}

/// Reads, parses and validates a client config file.
pub fn load_client(path: &Path) -> Result<ClientConfig, ConfigError> {
    parse_client(&read(path)?)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// Builds an [`ConfigError::Invalid`], turning a byte offset into `src` into a line number.
pub(crate) fn invalid(src: &str, key: &str, offset: Option<usize>, message: &str) -> ConfigError {
    let line = offset.map(|o| line_of(src, o));
    ConfigError::Invalid { key: key.to_owned(), line, message: message.to_owned() }
}

/// The 1-based line of byte `offset` in `src`.
pub(crate) fn line_of(src: &str, offset: usize) -> usize {
    src.get(..offset).unwrap_or(src).matches('\n').count() + 1
}

/// Checks a name written at `offset` under `key` (1 to 64 of `A-Z a-z 0-9 . _ -`).
pub(crate) fn name(src: &str, key: &str, spanned: toml::Spanned<String>) -> Result<Name, ConfigError> {
    let at = spanned.span().start;
    let text = spanned.into_inner();
    Name::new(&text).map_err(|e| invalid(src, key, Some(at), &format!("`{text}` is not a valid name: {e}")))
}

/// Checks a `host:port` written at `offset` under `key`.
pub(crate) fn target(src: &str, key: &str, offset: usize, text: &str) -> Result<Target, ConfigError> {
    Target::new(text).map_err(|_| invalid(src, key, Some(offset), &format!("`{text}` is not host:port")))
}
