//! `wmproxy-client init`: a commented starter config for one server, ready to edit, with the
//! server's address, fingerprint and token filled in (as `wmproxy-server init` prints them),
//! and a control API with a fresh token.

use std::path::Path;

use wmproxy_config::control::CLIENT_CONTROL_BIND;

/// Why `init` wrote nothing.
pub type InitError = wmproxy_ops::cli::StarterError;

/// What the starter config says of its server and of this client.
#[derive(Debug)]
pub struct Starter<'a> {
    /// The server, `host:port`.
    pub server: &'a str,
    /// Its certificate's fingerprint.
    pub fingerprint: &'a str,
    /// The token the server gave.
    pub token: &'a str,
    /// This client's name.
    pub name: &'a str,
}

/// Writes the starter config to `path`, never over an existing file, readable by its owner
/// only (it holds the token). The caller checks the values (the config's loader does too).
pub fn init(path: &Path, starter: &Starter<'_>) -> Result<(), InitError> {
    let control_token = wmproxy_ops::cli::random_token().map_err(|e| InitError::write(path, e))?;
    wmproxy_ops::cli::write_starter(path, &render(starter, &control_token))
}

fn render(s: &Starter<'_>, control_token: &str) -> String {
    let quoted = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let (server, fingerprint, token, name) = (quoted(s.server), quoted(s.fingerprint), quoted(s.token), quoted(s.name));
    format!(
        r#"# wmproxy-client, written by `wmproxy-client init`. Every key and its default:
# docs/configuration.md. Check an edit with `wmproxy-client check --config THIS_FILE`; a
# running client takes new services with `wmproxy-client reload --config THIS_FILE`.

# The server (UDP; TLS over TCP on the same port number where UDP is blocked), and the
# fingerprint of its certificate, as `wmproxy-server init` printed them.
server_addr = {server}
server_fingerprint = {fingerprint}

# This client's name on the server, and its token there.
name = {name}
token = {token}

# A service of this machine published on the server (users connect to the server's port 6022):
# [[services]]
# name = "ssh"
# local_addr = "127.0.0.1:22"
# remote_port = 6022

# A SOCKS5 proxy on this machine whose connections leave from the server:
# [[proxies]]
# type = "socks5"
# listen = "127.0.0.1:1080"

{control}"#,
        control = wmproxy_ops::cli::starter_control("wmproxy-client", CLIENT_CONTROL_BIND, control_token)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_config_loads_with_what_it_was_given_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("client.toml");
        let fingerprint =
            "3b:8e:11:07:2c:55:9a:40:f1:62:d8:0e:7c:b3:21:94:58:aa:0f:c6:3d:e2:71:18:b9:5f:04:cd:66:e0:13:a7";
        let starter =
            Starter { server: "203.0.113.10:7835", fingerprint, token: "a-token-of-the-server", name: "home" };
        init(&path, &starter).unwrap_or_else(|e| panic!("{e}"));
        let config = wmproxy_config::load_client(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.servers[0].addr, "203.0.113.10:7835");
        assert_eq!(config.servers[0].token.expose(), "a-token-of-the-server");
        assert_eq!(config.name.as_str(), "home");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(matches!(init(&path, &starter), Err(InitError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap_or_default(), text, "the file is unchanged");
    }
}
