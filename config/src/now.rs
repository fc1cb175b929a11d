//! The running config written back as its file (`GET /now`): the file's key names (`type`,
//! `remote_port`, `*_secs`), fingerprints in colon-hex, no key the file would not have (no
//! `remote_port = 0` placeholder, no empty optional keys). Secrets are written as [`MASKED`];
//! with them filled in, the loader reads the table back into an equal config.

use toml::{Table, Value};

use crate::egress::EgressPolicy;
use crate::forward::Forward;
use crate::proxy::Proxy;
use crate::server::{ClientEntry, ServerConfig};
use crate::service::{Exposure, Publish, Service};
use crate::visitor::{PrivateAccess, Visitor};
use crate::{ClientConfig, GroupJoin, ServerEntry, ServerTrust};

/// What every secret is written as.
pub const MASKED: &str = "MASKED";

/// Puts `secret` in place of every [`MASKED`] string in `value` (a `to_file` table, or `/now`'s
/// answer as TOML), so that it loads again: for tests and tools that have the secrets.
pub fn fill_secrets(value: &mut Value, secret: &str) {
    match value {
        Value::String(s) if s == MASKED => secret.clone_into(s),
        // A proxy URL's password.
        Value::String(s) if s.contains(&format!(":{MASKED}@")) => {
            *s = s.replace(&format!(":{MASKED}@"), &format!(":{secret}@"))
        }
        Value::Array(items) => items.iter_mut().for_each(|v| fill_secrets(v, secret)),
        Value::Table(t) => t.iter_mut().for_each(|(_, v)| fill_secrets(v, secret)),
        _ => {}
    }
}

/// `value` as a TOML value; a part that cannot be one (never, for the config's types) is left
/// out rather than failing the whole table.
fn value<T: serde::Serialize + ?Sized>(v: &T) -> Option<Value> {
    Value::try_from(v).ok()
}

/// Sets `key` to `v` when it converts.
fn put<T: serde::Serialize + ?Sized>(table: &mut Table, key: &str, v: &T) {
    if let Some(v) = value(v) {
        table.insert(key.to_owned(), v);
    }
}

fn masked() -> Value {
    Value::String(MASKED.to_owned())
}

impl ServerConfig {
    /// This config as its file would say it (see the module's documentation).
    pub fn to_file(&self) -> Table {
        let mut t = Table::new();
        put(&mut t, "bind", &self.bind);
        match self.tcp_bind {
            crate::server::TcpBind::SameAsQuic => {}
            crate::server::TcpBind::At(addr) => put(&mut t, "tcp_bind", &addr),
            crate::server::TcpBind::Off => put(&mut t, "tcp_bind", "off"),
        }
        put(&mut t, "state_dir", &self.state_dir);
        put(&mut t, "public_bind", &self.public_bind);
        if let Some(shared) = &self.shared {
            t.insert("token".into(), masked());
            put(&mut t, "allow_ports", &shared.allow_ports.0);
            put(&mut t, "allow_domains", &shared.allow_domains);
        }
        put_some(&mut t, "tls", self.tls.as_ref());
        put(&mut t, "limits", &self.limits);
        t.insert("egress".into(), Value::Table(egress(&self.egress)));
        put(&mut t, "vhost", &self.vhost);
        put_some(&mut t, "control", self.control.as_ref());
        let mut clients: Vec<(&String, &ClientEntry)> = self.clients.iter().collect();
        clients.sort_by_key(|(name, _)| *name);
        let clients = clients.into_iter().map(|(name, entry)| {
            let mut c = Table::new();
            put(&mut c, "name", name);
            c.insert("token".into(), masked());
            put(&mut c, "allow_ports", &entry.allow_ports.0);
            put(&mut c, "allow_domains", &entry.allow_domains);
            Value::Table(c)
        });
        t.insert("clients".into(), Value::Array(clients.collect()));
        t.insert("groups".into(), Value::Array(self.groups.iter().filter_map(value).collect()));
        let proxies = self.proxies.iter().map(|p| {
            let mut table = proxy(&p.proxy);
            put(&mut table, "via", &p.via);
            Value::Table(table)
        });
        t.insert("proxies".into(), Value::Array(proxies.collect()));
        t
    }
}

impl ClientConfig {
    /// This config as its file would say it (see the module's documentation).
    pub fn to_file(&self) -> Table {
        let mut t = Table::new();
        match self.servers.as_slice() {
            [one] => server(&mut t, one, ("server_addr", "tcp_server_addr")),
            several => {
                let entries = several.iter().map(|s| {
                    let mut entry = Table::new();
                    server(&mut entry, s, ("addr", "tcp_addr"));
                    Value::Table(entry)
                });
                t.insert("servers".into(), Value::Array(entries.collect()));
            }
        }
        put(&mut t, "mode", &self.mode);
        put(&mut t, "egress", &self.egress);
        put(&mut t, "transport", &self.transport);
        if let Some(proxy) = &self.tcp_proxy {
            put(&mut t, "proxy_url", &proxy.to_url_masked());
        }
        put(&mut t, "name", &self.name);
        t.insert("services".into(), Value::Array(self.services.iter().map(|s| Value::Table(service(s))).collect()));
        t.insert("forwards".into(), Value::Array(self.forwards.iter().filter_map(|f: &Forward| value(f)).collect()));
        t.insert("proxies".into(), Value::Array(self.proxies.iter().map(|p| Value::Table(proxy(p))).collect()));
        t.insert("visitors".into(), Value::Array(self.visitors.iter().map(|v| Value::Table(visitor(v))).collect()));
        t.insert("server_proxies_egress".into(), Value::Table(egress(&self.server_proxies_egress)));
        put(&mut t, "limits", &self.limits);
        put_some(&mut t, "control", self.control.as_ref());
        t
    }
}

/// One server's keys, into the file's top level or a `[[servers]]` entry (whose address keys
/// are `addr` and `tcp_addr`); its token masked.
fn server(t: &mut Table, s: &ServerEntry, (addr, tcp_addr): (&str, &str)) {
    put(t, addr, &s.addr);
    put(t, tcp_addr, &s.tcp_addr);
    put(t, "server_name", &s.server_name);
    match &s.trust {
        ServerTrust::Fingerprint(sha) => {
            let hex: Vec<String> = sha.iter().map(|b| format!("{b:02x}")).collect();
            t.insert("server_fingerprint".into(), Value::String(hex.join(":")));
        }
        ServerTrust::CaFile(path) => put(t, "ca_file", path),
        ServerTrust::SystemRoots => {
            t.insert("system_roots".into(), Value::Boolean(true));
        }
    }
    t.insert("token".into(), masked());
}

/// An `[egress]` table.
fn egress(policy: &EgressPolicy) -> Table {
    let mut t = Table::new();
    let (allow, deny) = policy.networks();
    put(&mut t, "allow", &allow.iter().map(ToString::to_string).collect::<Vec<_>>());
    put(&mut t, "deny", &deny.iter().map(ToString::to_string).collect::<Vec<_>>());
    let (allow_domains, deny_domains) = policy.domains();
    put(&mut t, "allow_domains", allow_domains);
    put(&mut t, "deny_domains", deny_domains);
    let (allow_ports, deny_ports) = policy.ports();
    put(&mut t, "allow_ports", allow_ports);
    put(&mut t, "deny_ports", deny_ports);
    t
}

/// A `[[proxies]]` entry's own keys (a server proxy adds `via`).
fn proxy(p: &Proxy) -> Table {
    let mut t = Table::new();
    put(&mut t, "type", &p.kind);
    put(&mut t, "listen", &p.listen);
    if let Some(c) = &p.credentials {
        put(&mut t, "username", &c.username);
        t.insert("password".into(), masked());
    }
    put(&mut t, "handshake_timeout_secs", &p.handshake_timeout.as_secs());
    t
}

/// A `[[services]]` entry.
fn service(s: &Service) -> Table {
    let mut t = Table::new();
    put(&mut t, "name", &s.name);
    put(&mut t, "type", &s.exposure.kind());
    put(&mut t, "local_addr", &s.local_addr);
    if !s.access_log {
        t.insert("access_log".into(), Value::Boolean(false));
    }
    let port = |t: &mut Table, publish: &Publish<u16>| match publish {
        Publish::Own(0) => {}
        Publish::Own(port) => put(t, "remote_port", port),
        Publish::Group(join) => group_join(t, join),
        Publish::Private(access) => private(t, access),
    };
    // Host names, a subdomain and path prefixes: the keys of the HTTP-like kinds.
    let routes = |t: &mut Table, domains: &[String], subdomain: &Option<String>, locations: &[String]| {
        put_listed(t, "custom_domains", domains);
        put_some(t, "subdomain", subdomain.as_ref());
        put_listed(t, "locations", locations);
    };
    let proxy_protocol = match &s.exposure {
        Exposure::Tcp { publish, proxy_protocol, bandwidth_limit, idle_timeout_secs } => {
            port(&mut t, publish);
            put_some(&mut t, "bandwidth_limit", bandwidth_limit.as_ref());
            put_some(&mut t, "idle_timeout_secs", idle_timeout_secs.as_ref());
            proxy_protocol
        }
        Exposure::Udp { publish, bandwidth_limit } => {
            port(&mut t, publish);
            put_some(&mut t, "bandwidth_limit", bandwidth_limit.as_ref());
            &None
        }
        Exposure::Http { publish: Publish::Own(route), proxy_protocol } => {
            routes(&mut t, &route.custom_domains, &route.subdomain, &route.locations);
            put_some(&mut t, "host_header_rewrite", route.host_header_rewrite.as_ref());
            if let Some((user, _)) = &route.basic_auth {
                put(&mut t, "http_user", user);
                t.insert("http_password".into(), masked());
            }
            proxy_protocol
        }
        Exposure::Https { publish: Publish::Own(hosts), proxy_protocol } => {
            routes(&mut t, &hosts.custom_domains, &hosts.subdomain, &[]);
            proxy_protocol
        }
        Exposure::Ws { publish: Publish::Own(route), proxy_protocol } => {
            routes(&mut t, &route.custom_domains, &route.subdomain, &route.locations);
            proxy_protocol
        }
        Exposure::Http { publish: Publish::Group(join), proxy_protocol }
        | Exposure::Https { publish: Publish::Group(join), proxy_protocol }
        | Exposure::Ws { publish: Publish::Group(join), proxy_protocol } => {
            group_join(&mut t, join);
            proxy_protocol
        }
        Exposure::Http { publish: Publish::Private(access), proxy_protocol }
        | Exposure::Https { publish: Publish::Private(access), proxy_protocol }
        | Exposure::Ws { publish: Publish::Private(access), proxy_protocol } => {
            private(&mut t, access);
            proxy_protocol
        }
    };
    put_some(&mut t, "proxy_protocol", proxy_protocol.as_ref());
    t
}

/// Sets `key` to `v`, if there is one.
fn put_some<T: serde::Serialize>(t: &mut Table, key: &str, v: Option<&T>) {
    if let Some(v) = v {
        put(t, key, v);
    }
}

/// Sets `key` to `list`, unless it is empty (the file's default).
fn put_listed(t: &mut Table, key: &str, list: &[String]) {
    if !list.is_empty() {
        put(t, key, list);
    }
}

/// A `[[visitors]]` entry, its secret masked.
fn visitor(v: &Visitor) -> Table {
    let mut t = Table::new();
    put(&mut t, "name", &v.name);
    put(&mut t, "type", &v.kind);
    put(&mut t, "client", &v.client);
    put(&mut t, "service", &v.service);
    if v.secret_key.is_some() {
        t.insert("secret_key".into(), masked());
    }
    put(&mut t, "listen", &v.listen);
    put(&mut t, "mode", &v.mode);
    t
}

/// A private service's keys, its secret masked.
fn private(t: &mut Table, access: &PrivateAccess) {
    if access.secret_key.is_some() {
        t.insert("secret_key".into(), masked());
    }
    if !access.allow_visitors.is_empty() {
        put(t, "allow_visitors", &access.allow_visitors);
    }
}

/// A service's keys for joining a group.
fn group_join(t: &mut Table, join: &GroupJoin) {
    put(t, "group", &join.group);
    t.insert("group_key".into(), masked());
    put(t, "weight", &join.weight);
    if join.drain {
        t.insert("drain".into(), Value::Boolean(true));
    }
    if let Some(check) = &join.health_check {
        put(t, "health_check", check);
    }
}
