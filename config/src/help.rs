//! What an error says about the file as a whole and about a key: the shape of the file
//! ([`check_shape`]: every missing required key at once, and a list written as one table), run
//! when serde misses a key or a list (and on a file it takes, for a choice between keys), and
//! the hint added to serde's own errors ([`explain`]: which key, what it is for, and what it
//! takes), so that "expected u16" never comes alone.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::ConfigError;

/// A required key and what it is for. Alternatives are separated by `|`: any one will do.
type Required = (&'static str, &'static str);

/// What a file must have, and which of its sections are lists of entries.
#[derive(Debug)]
pub(crate) struct Schema {
    /// The file: `client` or `server`.
    pub file: &'static str,
    /// Top-level keys the file cannot do without.
    pub required: &'static [Required],
    /// Sections written `[[name]]`, with the keys each entry cannot do without.
    pub lists: &'static [(&'static str, &'static [Required])],
    /// Required keys a section makes optional (as written in `required`): `[[servers]]`
    /// entries carry their own token and trust, checked when they are validated.
    pub excused: &'static [(&'static str, &'static [&'static str])],
}

/// The client's file.
pub(crate) const CLIENT: Schema = Schema {
    file: "client",
    required: &[
        ("server_addr|servers", "the server's UDP address, host:port (or [[servers]] entries)"),
        ("name", "this client's name"),
        ("token", "this client's token, as the server knows it"),
        (
            "server_fingerprint|ca_file|system_roots",
            "how to trust the server: the fingerprint it prints at start, a CA file, or system_roots = true",
        ),
    ],
    lists: &[
        ("services", &[("name", "the service's name"), ("local_addr", "where the service listens, host:port")]),
        ("forwards", &[("listen", "the local address to listen on"), ("target", "where to go from the server")]),
        ("proxies", &[("type", "\"socks5\" or \"http\""), ("listen", "the local address to listen on")]),
        ("servers", &[("addr", "the server's UDP address, host:port")]),
        (
            "visitors",
            &[
                ("name", "the visitor's name"),
                ("client", "the client that publishes the private service"),
                ("service", "the private service's name on that client"),
                ("listen", "the local address to listen on"),
            ],
        ),
    ],
    excused: &[("servers", &["token", "server_fingerprint|ca_file|system_roots"])],
};

/// The server's file.
pub(crate) const SERVER: Schema = Schema {
    file: "server",
    required: &[("token|clients", "how clients authenticate: a shared `token`, or [[clients]] entries")],
    lists: &[
        (
            "clients",
            &[
                ("name", "the client's name"),
                ("token", "its token"),
                ("allow_ports", "the ports it may publish (no default), e.g. [\"6000-6010\"]"),
            ],
        ),
        ("groups", &[("name", "the group's name"), ("key", "the key its members join with")]),
        (
            "proxies",
            &[
                ("type", "\"socks5\" or \"http\""),
                ("listen", "the address to listen on"),
                ("via", "the client (or group) the connections leave from"),
            ],
        ),
    ],
    excused: &[],
};

/// Refuses a file that misses required keys (all of them listed), or writes a list as a
/// single table (`[services]` for `[[services]]`).
pub(crate) fn check_shape(doc: &DeTable<'_>, src: &str, schema: &Schema) -> Result<(), ConfigError> {
    for (list, _) in schema.lists {
        if let Some(value) = doc.get(*list)
            && let DeValue::Table(_) = value.get_ref()
        {
            let message = format!(
                "`{list}` is a list: write each entry under its own [[{list}]] header (an array of tables), \
                 not [{list}]"
            );
            return Err(crate::invalid(src, list, Some(value.span().start), &message));
        }
    }
    let mut missing = Vec::new();
    let excused = |keys: &str| schema.excused.iter().any(|(by, list)| doc.contains_key(*by) && list.contains(&keys));
    for (keys, meaning) in schema.required {
        if !keys.split('|').any(|k| doc.contains_key(k)) && !excused(keys) {
            missing.push(format!("{}: {meaning}", spell(keys)));
        }
    }
    for (list, required) in schema.lists {
        let Some(DeValue::Array(entries)) = doc.get(*list).map(|v| v.get_ref()) else { continue };
        for (i, entry) in entries.iter().enumerate() {
            let DeValue::Table(table) = entry.get_ref() else { continue };
            let line = crate::line_of(src, entry.span().start);
            for (key, meaning) in *required {
                if !table.contains_key(*key) {
                    missing.push(format!("line {line}, [[{list}]] #{}: `{key}`: {meaning}", i + 1));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if missing.iter().any(|m| m.starts_with("`token`"))
        && let Some(table) = nested_token(doc)
    {
        missing.push(format!(
            "note: the `token` under [{table}] is that table's own; the file's `token` goes above the first [table] \
             header (a key below a header belongs to that table)"
        ));
    }
    Err(ConfigError::Missing { file: schema.file, keys: missing })
}

/// Whether serde's error `e` is one [`check_shape`] explains better: a missing key, or a
/// table where a list belongs.
pub(crate) fn about_shape(e: &toml::de::Error) -> bool {
    e.message().starts_with("missing field") || e.message().contains("expected a sequence")
}

/// `a|b` as "`a` (or `b`)".
fn spell(keys: &str) -> String {
    let mut parts = keys.split('|');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<String> = parts.map(|k| format!("`{k}`")).collect();
    if rest.is_empty() { format!("`{first}`") } else { format!("`{first}` (or {})", rest.join(", or ")) }
}

/// The first table of `doc` that has a `token` key of its own.
fn nested_token(doc: &DeTable<'_>) -> Option<String> {
    doc.iter().find_map(|(name, value)| match value.get_ref() {
        DeValue::Table(t) if t.contains_key("token") => Some(name.get_ref().to_string()),
        _ => None,
    })
}

/// serde's error `e` on `src`, with a hint naming the key it points at, what the key is for
/// and the values it takes.
pub(crate) fn explain(mut e: toml::de::Error, src: &str) -> ConfigError {
    e.set_input(Some(src));
    let hint = e.span().and_then(|span| {
        let doc = DeTable::parse(src).ok()?;
        let path = key_at(&DeValue::Table(doc.into_inner()), &span, &mut Vec::new())?;
        let key = path.last()?.clone();
        let section = path.iter().rev().nth(1).cloned().unwrap_or_default();
        let written = path.join(".");
        let meaning = meaning(&section, &key);
        Some(match meaning {
            Some(meaning) => format!("`{written}` is {meaning}"),
            None => format!("(the key is `{written}`)"),
        })
    });
    ConfigError::Parse { source: e, hint }
}

/// The path of the key whose name or value is at `span`, searching down from `value`. (The
/// spans of `[[list]]` entries do not cover their keys, so every branch is searched.)
fn key_at(value: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<String>) -> Option<Vec<String>> {
    match value {
        DeValue::Table(table) => {
            for (key, child) in table {
                path.push(key.get_ref().to_string());
                if key.span() == *span || child.span() == *span {
                    return Some(path.clone());
                }
                if let Some(found) = key_at(child.get_ref(), span, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        DeValue::Array(items) => {
            let at = path.pop()?;
            for (i, child) in items.iter().enumerate() {
                path.push(format!("{at}[{i}]"));
                if child.span() == *span {
                    return Some(path.clone());
                }
                if let Some(found) = key_at(child.get_ref(), span, path) {
                    return Some(found);
                }
                path.pop();
            }
            path.push(at);
            None
        }
        _ => None,
    }
}

/// What `key` (in `section`, the enclosing key without its index) is for, and what it takes.
fn meaning(section: &str, key: &str) -> Option<&'static str> {
    let section = section.split('[').next().unwrap_or_default();
    Some(match (section, key) {
        ("services", "remote_port") => {
            "the service's public port on the server: 0-65535, 0 (the default) lets the server pick; only \
             for type = \"tcp\" or \"udp\" (an HTTP service is reached by custom_domains or subdomain on the \
             vhost port)"
        }
        ("groups", "remote_port") => "the group's public port on the server: 1-65535",
        (_, "remote_port") => "a public port: 0-65535",
        ("services", "local_addr") => "where the service listens, reachable from the client: \"host:port\"",
        (_, "listen") => "the address to listen on: \"ip:port\", e.g. \"127.0.0.1:1080\"",
        (_, "target") => "where connections go from the far end: \"host:port\"",
        (_, "server_addr") | ("servers", "addr") => "the server's UDP address: \"host:port\"",
        ("servers", "tcp_addr") => "the server's TCP transport: \"host:port\" (defaults to addr)",
        ("", "mode") => "with several [[servers]]: \"all\" (each publishes the services) or \"failover\"",
        ("visitors", "mode") => {
            "how connections reach the service: \"auto\" (direct when possible), \"direct\" or \"relay\""
        }
        ("", "egress") => {
            "which server the forwards and proxies leave from: \"first\" or \"balanced\" (as a table, the old \
             name of [server_proxies_egress])"
        }
        (_, "bind" | "http_bind" | "https_bind") => "an address to listen on: \"ip:port\"",
        (_, "public_bind") => "the address public ports listen on: an IP address, e.g. \"0.0.0.0\"",
        (_, "allow_ports") => "the ports that may be used: a list of ports and ranges, e.g. [6000, \"7000-7010\"]",
        (_, "deny_ports") => "ports never dialed: a list of ports, e.g. [25]",
        ("egress", "allow" | "deny") => {
            "networks in CIDR form, e.g. [\"10.0.0.0/8\", \"192.168.1.5/32\"] (a bare address counts as /32 or /128)"
        }
        (_, "allow_domains" | "deny_domains" | "custom_domains") => {
            "a list of host names, e.g. [\"example.com\", \"*.example.com\"]"
        }
        (_, "locations") => "a list of path prefixes, e.g. [\"/\", \"/api\"]",
        (_, "subdomain") => "a name under the server's subdomain_host, e.g. \"blog\"",
        ("groups", "key") => {
            "the group's key, which its members present as `group_key`: a secret of at least 8 characters, \
             \"…\", { file = \"path\" } or { env = \"VARIABLE\" }"
        }
        ("services", "allow_visitors") => "the clients that may visit this private service: a list of client names",
        ("visitors", "client") => "the client that publishes the private service: a client name",
        ("visitors", "service") => "the private service's name on that client",
        (_, "token" | "key" | "group_key" | "password" | "http_password" | "secret_key") => {
            "a secret of at least 8 characters: \"…\", { file = \"path\" } or { env = \"VARIABLE\" }"
        }
        (_, "name") => "a name: 1 to 64 of A-Z a-z 0-9 . _ -",
        (_, "type") => "the entry's kind, a string such as \"tcp\"",
        (_, "weight") => "the backend's share of the group's work: 1-1000",
        (_, "policy") => "round_robin, weighted_round_robin, least_connections or ip_hash",
        (_, "bandwidth_limit") => "bytes per second each way: a number or \"2MB\", \"512KB\" (1 KB to 100 GB)",
        (_, "proxy_protocol") => "\"v1\" or \"v2\"",
        (_, "expect_status") => "HTTP statuses that pass the check: a list of numbers 100-599",
        (_, "access_log" | "drain" | "system_roots" | "start_healthy") => "true or false",
        (_, k) if k.ends_with("_secs") => "a number of seconds (see the reference for its range)",
        (_, k) if k.ends_with("_ms") => "a number of milliseconds (see the reference for its range)",
        (_, k) if k.starts_with("max_") => "a count (see the reference for its range)",
        _ => return None,
    })
}
