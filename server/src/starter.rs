//! `wmproxy-server init`: a commented starter config, ready to edit, with a fresh token and
//! control token; the certificate is generated in its state directory at once, so that its
//! fingerprint can go into clients' configs (`wmproxy-client init`) before the first start.

use std::path::Path;

use wmproxy_tunnel::tls::Fingerprint;

use wmproxy_config::control::SERVER_CONTROL_BIND;
use wmproxy_ops::cli::{StarterError, random_token};

use crate::identity::{Identity, IdentityError};

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The file exists, or could not be written.
    #[error(transparent)]
    Starter(#[from] StarterError),
    /// The certificate could not be generated or loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Started {
    /// The certificate's fingerprint, which clients pin.
    pub fingerprint: Fingerprint,
    /// The clients' token.
    pub token: String,
    /// The UDP port clients connect to.
    pub port: u16,
}

/// Writes the starter config to `path` (never over an existing file; readable by its owner
/// only, since it holds the tokens) with its state directory `state_dir`, where the
/// certificate is generated (or the one already there kept).
pub fn init(path: &Path, state_dir: &Path) -> Result<Started, InitError> {
    if path.exists() {
        return Err(StarterError::exists(path).into());
    }
    let identity = Identity::load_or_generate(None, state_dir)?;
    let write_err = |e| StarterError::write(path, e);
    let (token, control_token) = (random_token().map_err(write_err)?, random_token().map_err(write_err)?);
    let port = wmproxy_config::server::DEFAULT_PORT;
    let text = render(&identity.fingerprint, state_dir, (&token, &control_token), port);
    wmproxy_ops::cli::write_starter(path, &text)?;
    Ok(Started { fingerprint: identity.fingerprint, token, port })
}

/// The starter config's text.
fn render(fingerprint: &Fingerprint, state_dir: &Path, (token, control_token): (&str, &str), port: u16) -> String {
    let state_dir = toml::Value::String(state_dir.display().to_string());
    format!(
        r#"# wmproxy-server, written by `wmproxy-server init`. Every key and its default:
# docs/configuration.md. Check an edit with `wmproxy-server check --config THIS_FILE`;
# a running server takes most edits with `wmproxy-server reload --config THIS_FILE`.

# The tunnel endpoint: UDP on every address, IPv4 and IPv6. Open this port in the firewall,
# for UDP and for TCP (the TCP transport, for clients whose network blocks UDP, listens on
# the same port number by default).
bind = "[::]:{port}"

# Where the certificate, key and other state live. The certificate generated there has this
# fingerprint, which clients pin (`server_fingerprint`):
#   {fingerprint}
state_dir = {state_dir}

# Any client name may connect with this token. For one token per client, write [[clients]]
# entries instead (docs/configuration.md).
token = "{token}"

# The public ports clients may publish their services on.
allow_ports = ["1024-65535"]

# Host names clients may claim on an HTTP port by name (and uncomment [vhost] below):
# allow_domains = ["*.example.com"]
#
# [vhost]
# http_bind = "[::]:80"

{control}"#,
        control = wmproxy_ops::cli::starter_control("wmproxy-server", SERVER_CONTROL_BIND, control_token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_loads_with_its_tokens_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("server.toml");
        let started = init(&path, &dir.path().join("state")).unwrap_or_else(|e| panic!("{e}"));
        let config = wmproxy_config::load_server(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.bind.port(), started.port);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.contains(&started.token) && text.contains(&started.fingerprint.to_string()), "{text}");
        assert!(config.control.is_some(), "the control API is on");
        match init(&path, &dir.path().join("state")) {
            Err(InitError::Starter(StarterError::Exists(p))) => assert_eq!(p, path),
            other => panic!("overwrote: {other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text, "the file is unchanged");
    }
}
