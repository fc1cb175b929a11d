//! The servers a client keeps tunnels to: the single-server keys at the top of the file, or a
//! `[[servers]]` list, each entry with its own address, trust and (optionally) token; `mode`
//! (every server publishes, or one at a time) and `egress` (which server the client's own
//! forwards and proxies leave from).

use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::egress::EgressFile;
use crate::secret::Secret;
use crate::{ConfigError, invalid};

/// The most servers one client keeps tunnels to.
pub const MAX_SERVERS: usize = 16;

/// One `[[servers]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// The server, `host:port` (UDP).
    pub addr: Spanned<String>,
    /// Its TCP transport, `host:port`; defaults to `addr`.
    #[serde(default)]
    pub tcp_addr: Option<Spanned<String>>,
    /// Name checked against its certificate; defaults to the host of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Trust exactly this certificate (SHA-256, as the server prints it).
    #[serde(default)]
    pub server_fingerprint: Option<Spanned<String>>,
    /// Trust certificates issued by the CA(s) in this PEM file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trust the operating system's root certificates.
    #[serde(default)]
    pub system_roots: bool,
    /// This server's token for the client; defaults to the file's `token`.
    #[serde(default)]
    pub token: Option<Secret>,
}

/// The trust keys as written, at the top of the file or in one entry.
pub(crate) struct TrustKeys {
    pub fingerprint: Option<Spanned<String>>,
    pub ca_file: Option<PathBuf>,
    pub system_roots: bool,
}

impl TrustKeys {
    fn is_empty(&self) -> bool {
        self.fingerprint.is_none() && self.ca_file.is_none() && !self.system_roots
    }

    /// The one trust option set; `key` prefixes the keys an error names (`servers[1].`), and
    /// `at` is where the entry is written, if known.
    fn validate(self, src: &str, key: &str, at: Option<usize>) -> Result<ServerTrust, ConfigError> {
        let name = |k: &str| format!("{key}{k}");
        match (self.fingerprint, self.ca_file, self.system_roots) {
            (Some(fp), None, false) => {
                let at = fp.span().start;
                let sha = parse_fingerprint(fp.get_ref())
                    .map_err(|m| invalid(src, &name("server_fingerprint"), Some(at), &m))?;
                Ok(ServerTrust::Fingerprint(sha))
            }
            (None, Some(path), false) => Ok(ServerTrust::CaFile(path)),
            (None, None, true) => Ok(ServerTrust::SystemRoots),
            (None, None, false) => Err(invalid(
                src,
                &name("server_fingerprint"),
                at,
                "no way to trust the server: set one of `server_fingerprint`, `ca_file` or `system_roots = true`",
            )),
            _ => Err(invalid(
                src,
                &name("server_fingerprint"),
                at,
                "set only one of `server_fingerprint`, `ca_file` and `system_roots`",
            )),
        }
    }
}

/// The top-level keys that describe one server (or the defaults of every `[[servers]]` entry).
pub(crate) struct TopLevel {
    pub server_addr: Option<Spanned<String>>,
    pub tcp_server_addr: Option<Spanned<String>>,
    pub server_name: Option<String>,
    pub trust: TrustKeys,
    pub token: Option<Secret>,
}

/// How the client is told to trust a server. Exactly one is configured: there is no insecure
/// mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ServerTrust {
    /// SHA-256 of the server certificate (32 bytes).
    Fingerprint([u8; 32]),
    /// CA certificates from a PEM file.
    CaFile(PathBuf),
    /// The system's root certificates.
    SystemRoots,
}

/// One server the client keeps a tunnel to, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerEntry {
    /// `host:port` of the server (UDP).
    pub addr: String,
    /// `host:port` of its TCP transport.
    pub tcp_addr: String,
    /// TLS server name.
    pub server_name: String,
    /// How it is trusted.
    pub trust: ServerTrust,
    /// The client's token there.
    pub token: Secret,
}

/// Validates the servers: the top-level keys alone (one server), or `[[servers]]` entries,
/// which take the top-level trust and token where they set none. The top-level address keys
/// and `[[servers]]` exclude each other.
pub(crate) fn validate(src: &str, top: TopLevel, entries: Vec<ServerFile>) -> Result<Vec<ServerEntry>, ConfigError> {
    if entries.is_empty() {
        let Some(addr) = top.server_addr else {
            return Err(invalid(src, "server_addr", None, "no server: set `server_addr`, or list [[servers]]"));
        };
        let token = top.token.ok_or_else(|| invalid(src, "token", None, "this client's token is missing"))?;
        let trust = top.trust.validate(src, "", None)?;
        let keys = ("server_addr", "tcp_server_addr");
        return Ok(vec![entry(src, keys, (addr, top.tcp_server_addr), top.server_name, (trust, token))?]);
    }
    for (key, set) in [
        ("server_addr", top.server_addr.as_ref().map(|s| s.span().start)),
        ("tcp_server_addr", top.tcp_server_addr.as_ref().map(|s| s.span().start)),
    ] {
        if let Some(at) = set {
            let m = format!("`{key}` and [[servers]] exclude each other: give each server its address in its entry");
            return Err(invalid(src, key, Some(at), &m));
        }
    }
    if top.server_name.is_some() {
        let m = "`server_name` and [[servers]] exclude each other: set it in the entries that need it";
        return Err(invalid(src, "server_name", None, m));
    }
    if entries.len() > MAX_SERVERS {
        let m = format!("at most {MAX_SERVERS} servers, got {}", entries.len());
        return Err(invalid(src, "servers", None, &m));
    }
    let default_trust = if top.trust.is_empty() { None } else { Some(top.trust.validate(src, "", None)?) };
    let mut servers: Vec<ServerEntry> = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let prefix = format!("servers[{i}].");
        let keys = TrustKeys { fingerprint: e.server_fingerprint, ca_file: e.ca_file, system_roots: e.system_roots };
        let at = e.addr.span().start;
        let trust = match (keys.is_empty(), &default_trust) {
            (true, Some(trust)) => trust.clone(),
            _ => keys.validate(src, &prefix, Some(at))?,
        };
        let token = e.token.or_else(|| top.token.clone()).ok_or_else(|| {
            invalid(
                src,
                &format!("{prefix}token"),
                Some(at),
                "no token for this server: set its `token`, or the file's",
            )
        })?;
        let addr_key = format!("{prefix}addr");
        let tcp_key = format!("{prefix}tcp_addr");
        let server = entry(src, (&addr_key, &tcp_key), (e.addr, e.tcp_addr), e.server_name, (trust, token))?;
        if servers.iter().any(|s| s.addr == server.addr) {
            return Err(invalid(src, &addr_key, Some(at), &format!("`{}` is listed twice", server.addr)));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// One server's entry; `addr_key` and `tcp_key` are the keys its errors name.
fn entry(
    src: &str,
    (addr_key, tcp_key): (&str, &str),
    (addr, tcp_addr): (Spanned<String>, Option<Spanned<String>>),
    server_name: Option<String>,
    (trust, token): (ServerTrust, Secret),
) -> Result<ServerEntry, ConfigError> {
    let at = addr.span().start;
    let addr = addr.into_inner();
    let host = split_host_port(&addr).map_err(|m| invalid(src, addr_key, Some(at), &m))?.0.to_owned();
    let tcp_addr = match tcp_addr {
        Some(tcp) => {
            let at = tcp.span().start;
            split_host_port(tcp.get_ref()).map_err(|m| invalid(src, tcp_key, Some(at), &m))?;
            tcp.into_inner()
        }
        None => addr.clone(),
    };
    let server_name = server_name.unwrap_or_else(|| host.trim_matches(['[', ']']).to_owned());
    Ok(ServerEntry { addr, tcp_addr, server_name, trust, token })
}

/// With several servers: do they all publish the client's services, or one at a time?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServersMode {
    /// A tunnel to every server; each publishes the services (the default).
    #[default]
    All,
    /// One tunnel, to the first server that answers in the list's order; back to an earlier
    /// one once it has answered for `limits.failback_after_secs`.
    Failover,
}

impl ServersMode {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Failover => "failover",
        }
    }
}

/// Which server the client's own forwards and proxies leave from, when several are up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressChoice {
    /// The first server of the list whose tunnel is up (the default).
    #[default]
    First,
    /// New connections spread over the servers up now with the lowest round-trip times.
    Balanced,
}

impl EgressChoice {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "first",
            Self::Balanced => "balanced",
        }
    }
}

/// The client file's `egress` key: `"first"` or `"balanced"`; or, as a table, the old name of
/// `[server_proxies_egress]` (still read, with a warning).
#[derive(Debug, Clone)]
pub enum EgressKey {
    /// `egress = "first"` or `"balanced"`.
    Choice(EgressChoice),
    /// `[egress]`, the old name of `[server_proxies_egress]`.
    OldPolicy(EgressFile),
}

impl<'de> Deserialize<'de> for EgressKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl<'de> Visitor<'de> for Key {
            type Value = EgressKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"first\" or \"balanced\" (or, as a table, the old name of [server_proxies_egress])")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EgressKey, E> {
                match v {
                    "first" => Ok(EgressKey::Choice(EgressChoice::First)),
                    "balanced" => Ok(EgressKey::Choice(EgressChoice::Balanced)),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EgressKey, A::Error> {
                EgressFile::deserialize(de::value::MapAccessDeserializer::new(map)).map(EgressKey::OldPolicy)
            }
        }
        d.deserialize_any(Key)
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6), checking both parts are present.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("`{s}` is not host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.len() > 255 {
        return Err(bad());
    }
    Ok((host, port))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons allowed.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    let bad = || format!("a fingerprint is 64 hex digits (colons allowed), got `{s}`");
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
        *slot = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
    }
    Ok(out)
}
