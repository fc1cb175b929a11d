//! wmproxy configuration: TOML files, their defaults, and validation into runtime types.
//!
//! # Layout
//! - [`server`]: `ServerFile` (the file as written) → `ServerConfig` (validated).
//! - [`client`]: `ClientFile` → `ClientConfig`.
//! - [`ports`]: public port allowances. [`egress`]: which targets a server may dial.
//! - [`group`]: load-balancing groups (server side) and how a service joins one, with its
//!   health check (client side).
//! - [`proxy`]: the client's local SOCKS5 and HTTP proxies.
//! - [`vhost`]: the server's HTTP virtual-host port and the routes HTTP services ask for.
//! - [`secret`]: tokens, masked in `Debug` and `Display`.
//! - [`control`]: `[control]`, the control API of either end. [`reload`]: the report of what a
//!   reload changed.
//!
//! Parsing is strict (`deny_unknown_fields`); every error names the key and the line. Field
//! types validate themselves while parsing, so toml reports their position; checks that span
//! fields (duplicate names, exactly one trust option) run in `validate` and name the line from
//! the field's span.
#![forbid(unsafe_code)]

pub mod client;
pub mod control;
pub mod egress;
pub mod group;
pub mod ports;
pub mod proxy;
pub mod reload;
pub mod secret;
pub mod server;
pub mod vhost;

use std::path::{Path, PathBuf};

pub use client::{ClientConfig, ClientFile, ClientLimits, Forward, ProxyProtocol, ServerTrust, Service, ServiceType};
pub use control::ControlFile;
pub use egress::EgressPolicy;
pub use group::{CheckType, GroupFile, GroupJoin, HealthCheck, Policy};
pub use ports::{PortAllowance, PortRange};
pub use proxy::{Credentials, Proxy, ProxyType};
pub use reload::ReloadReport;
pub use secret::Secret;
pub use server::{ClientEntry, Limits, ServerConfig, ServerFile, TlsFiles};
pub use vhost::{HttpRoute, VhostFile};

/// Longest client or service name, in bytes (the wire protocol's limit).
pub const MAX_NAME_LEN: usize = 64;

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
    /// names the line, column and key.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
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
    toml::from_str::<ServerFile>(src)?.validate(src)
}

/// Parses and validates a client config from TOML text.
pub fn parse_client(src: &str) -> Result<ClientConfig, ConfigError> {
    toml::from_str::<ClientFile>(src)?.validate(src)
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
    let line = offset.map(|o| src.get(..o).unwrap_or(src).lines().count().max(1));
    ConfigError::Invalid { key: key.to_owned(), line, message: message.to_owned() }
}

/// A client or service name: 1 to [`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(ok_char) {
        return Err(format!("`{name}` is not a valid name: 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}
