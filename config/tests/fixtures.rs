//! Every example config parses; every invalid fixture fails with an error that names the key
//! and the line.
#![allow(clippy::unwrap_used)] // an unwrap here is an assertion

use std::path::Path;

use wmproxy_config::{ForwardKind, GroupKind, ServerTrust, ServiceKind, load_client, load_server};

fn here(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn examples_parse() {
    let server = load_server(&here("examples/server.toml")).unwrap();
    assert_eq!(server.bind.port(), 7835);
    assert_eq!(server.clients.len(), 2);
    assert!(server.client("home").unwrap().allow_ports.allows(6005));
    assert!(!server.client("home").unwrap().allow_ports.allows(6011));
    assert!(server.client("anyone").unwrap().allow_ports.allows(20050), "shared token");
    assert_eq!(server.limits.max_clients, 256);

    let client = load_client(&here("examples/client.toml")).unwrap();
    assert!(matches!(client.servers[0].trust, ServerTrust::Fingerprint(fp) if fp[0] == 0x3b));
    assert_eq!(client.servers[0].server_name, "203.0.113.10");
    assert_eq!(client.services.len(), 8);
    assert!(
        matches!(&client.services[7].exposure, wmproxy_config::Exposure::Tcp { publish: wmproxy_config::Publish::Private(a), .. } if a.secret_key.is_some())
    );
    assert_eq!((client.visitors[0].client.as_str(), client.visitors[0].service.as_str()), ("office", "rdp"));
    let web = client.services[6].exposure.group().unwrap();
    assert_eq!((web.group.as_str(), web.weight), ("web", 5));
    assert_eq!(web.health_check.as_ref().unwrap().rise, 2);
    assert_eq!(server.groups[0].policy, wmproxy_config::Policy::WeightedRoundRobin);
    assert!(
        matches!(&server.groups[2].kind, GroupKind::Http { custom_domains, .. } if custom_domains == &["www.example.com"])
    );
    assert_eq!(server.vhost.http_bind.map(|a| a.port()), Some(80));
    assert_eq!(server.control.as_ref().map(|c| c.addr("127.0.0.1:1").port()), Some(8837));
    assert_eq!(server.limits.drain_grace_secs, 30);
    assert_eq!(client.services[2].exposure.kind(), ServiceKind::Udp);
    assert!(matches!(&client.forwards[0].kind, ForwardKind::Tcp { target } if target == "db.internal.example:5432"));
    assert!(matches!(client.forwards[1].kind, ForwardKind::Udp { .. }));
    assert_eq!(client.limits.udp_flow_idle_timeout_secs, 60);
    assert_eq!(client.proxies.len(), 2);
    assert_eq!(server.proxies[0].via, "office");
    assert!(client.proxies[0].credentials.is_some() && client.proxies[1].credentials.is_none());
    assert_eq!(server.limits.max_udp_flows_per_client, 1024);
}

#[test]
fn secrets_are_masked_in_debug() {
    let server = load_server(&here("examples/server.toml")).unwrap();
    let client = load_client(&here("examples/client.toml")).unwrap();
    let shown = format!("{server:?} {client:?}");
    assert!(!shown.contains("change-me"), "{shown}");
    assert!(shown.contains("MASKED"));
}

/// (fixture, words the error must contain: the key and the line)
const SERVER_BAD: &[(&str, &[&str])] = &[
    ("server-unknown-key.toml", &["bnid", "line 2"]),
    ("server-bad-port-range.toml", &["7000-6000", "line 2"]),
    ("server-no-auth.toml", &["`token` (or `clients`)", "how clients authenticate"]),
    ("server-duplicate-client.toml", &["clients.name", "line 7", "duplicate"]),
    ("server-short-token.toml", &["token", "line 1", "at least 8"]),
    ("server-bad-cidr.toml", &["allow", "line 3"]),
    ("server-zero-udp-idle.toml", &["limits", "at least 1 second"]),
    ("server-bad-policy.toml", &["random", "line 7"]),
    ("server-http-group-without-hosts.toml", &["groups.custom_domains", "line 7", "host names"]),
    ("server-vhost-tls-without-https.toml", &["vhost.tls", "https_bind"]),
    ("server-tcp-bind-on-https.toml", &["tcp_bind", "vhost.https_bind", "0.0.0.0:443"]),
    ("server-bad-tcp-bind.toml", &["tcp_bind", "line 2", "nor `off`"]),
    // A kind takes only its own keys: refused by the parser, on the key's own line.
    ("server-udp-group-with-locations.toml", &["unknown field `locations`", "line 8"]),
];

const CLIENT_BAD: &[(&str, &[&str])] = &[
    ("client-no-trust.toml", &["server_fingerprint", "how to trust the server"]),
    ("client-two-trusts.toml", &["only one"]),
    ("client-bad-fingerprint.toml", &["server_fingerprint", "line 2", "64 hex digits"]),
    ("client-duplicate-service.toml", &["services.name", "line 12", "duplicate"]),
    ("client-bad-server-addr.toml", &["server_addr", "line 1", "host:port"]),
    ("client-bad-proxy-url.toml", &["proxy_url", "line 2", "http:// or socks5://"]),
    ("client-bad-transport.toml", &["transport", "line 2", "udp"]),
    ("client-bad-service-type.toml", &["type", "line 8", "sctp"]),
    ("client-bad-name.toml", &["name", "line 3", "not a valid name"]),
    ("client-zero-udp-flows.toml", &["limits", "at least 1"]),
    ("client-group-without-key.toml", &["group_key", "line 7"]),
    ("client-udp-check-without-addr.toml", &["health_check.addr", "line 7"]),
    ("client-group-with-domains.toml", &["services.group", "line 7", "set on the server"]),
    ("client-tcp-with-domains.toml", &["unknown field `custom_domains`", "line 9"]),
    ("client-private-with-port.toml", &["services.remote_port", "line 7", "no public port"]),
    ("client-private-bad-visitor-name.toml", &["services.allow_visitors", "line 9", "the laptop"]),
    ("client-visitor-without-service.toml", &["service", "the private service's name"]),
    ("client-visitor-of-itself.toml", &["visitors.client", "line 7", "own name"]),
    ("client-visitor-short-secret.toml", &["secret_key", "line 10", "at least 8"]),
];

#[test]
fn invalid_fixtures_name_key_and_line() {
    for (file, words) in SERVER_BAD {
        let err = load_server(&here(&format!("tests/fixtures/{file}"))).unwrap_err().to_string();
        for w in *words {
            assert!(err.contains(w), "{file}: `{w}` missing from: {err}");
        }
    }
    for (file, words) in CLIENT_BAD {
        let err = load_client(&here(&format!("tests/fixtures/{file}"))).unwrap_err().to_string();
        for w in *words {
            assert!(err.contains(w), "{file}: `{w}` missing from: {err}");
        }
    }
}

#[test]
fn missing_file_is_a_read_error() {
    let err = load_server(&here("tests/fixtures/does-not-exist.toml")).unwrap_err().to_string();
    assert!(err.contains("cannot read config file"), "{err}");
}

/// A secret is the string itself, a file's contents (trailing newline trimmed) or an
/// environment variable; the value then behaves as if written in place.
#[test]
fn secrets_come_from_files_and_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "token-from-a-file\n").expect("write");
    let base = "server_addr = \"127.0.0.1:7835\"\nserver_fingerprint = \"3b8e11072c559a40f162d80e7cb3219458aa0fc63de27118b95f04cd66e013a7\"\nname = \"home\"\n";
    let from_file = format!("{base}token = {{ file = \"{}\" }}\n", file.display());
    let config = wmproxy_config::parse_client(&from_file).expect("a token from a file");
    assert_eq!(config.servers[0].token.expose(), "token-from-a-file");
    // Cargo sets CARGO_MANIFEST_DIR for tests; a path is long enough to be a token.
    let from_env = format!("{base}token = {{ env = \"CARGO_MANIFEST_DIR\" }}\n");
    let config = wmproxy_config::parse_client(&from_env).expect("a token from the environment");
    assert_eq!(config.servers[0].token.expose(), std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let unset = format!("{base}token = {{ env = \"WMPROXY_SURELY_UNSET_VARIABLE\" }}\n");
    let e = wmproxy_config::parse_client(&unset).expect_err("an unset variable").to_string();
    assert!(e.contains("`WMPROXY_SURELY_UNSET_VARIABLE` is not set") && e.contains("line 4"), "{e}");
    let short = format!("{base}token = \"short\"\n");
    let e = wmproxy_config::parse_client(&short).expect_err("a short token").to_string();
    assert!(e.contains("at least 8 characters"), "{e}");
}

/// The client's table for what the server's proxies may reach through it is
/// `[server_proxies_egress]`; the old `[egress]` is read with a deprecation warning, and both
/// at once are refused (issue 19, item 12).
#[test]
fn server_proxies_egress_and_its_deprecated_alias() {
    let base = "server_addr = \"127.0.0.1:7835\"\nserver_fingerprint = \"3b8e11072c559a40f162d80e7cb3219458aa0fc63de27118b95f04cd66e013a7\"\nname = \"home\"\ntoken = \"home-token-123\"\n";
    let allows =
        |c: &wmproxy_config::ClientConfig| c.server_proxies_egress.permits("127.0.0.1".parse().unwrap(), |_| false);
    let new =
        wmproxy_config::parse_client(&format!("{base}[server_proxies_egress]\nallow = [\"127.0.0.1\"]\n")).unwrap();
    assert!(allows(&new) && new.warnings.is_empty(), "{:?}", new.warnings);
    let old = wmproxy_config::parse_client(&format!("{base}[egress]\nallow = [\"127.0.0.1\"]\n")).unwrap();
    assert!(allows(&old), "the old name still applies");
    assert!(
        old.warnings.iter().any(|w| w.contains("deprecated") && w.contains("[server_proxies_egress]")),
        "{:?}",
        old.warnings
    );
    let both = format!("{base}[egress]\nallow = []\n[server_proxies_egress]\nallow = []\n");
    let e = wmproxy_config::parse_client(&both).unwrap_err().to_string();
    assert!(e.contains("keep only the new one"), "{e}");
}
