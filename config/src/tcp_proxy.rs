//! `proxy_url`: the proxy the client's TCP transport goes through (an HTTP proxy with CONNECT,
//! or SOCKS5), as `http://[user:password@]host:port` or `socks5://[user:password@]host:port`.
//! The password is a [`Secret`]: status output shows it masked.

use serde::Serialize;

use crate::secret::Secret;

/// Which kind of proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TcpProxyKind {
    /// An HTTP proxy: `CONNECT host:port`.
    Http,
    /// A SOCKS5 proxy: `CONNECT` by name (the proxy resolves it).
    Socks5,
}

/// A proxy for the client's TCP transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpProxy {
    /// HTTP or SOCKS5.
    pub kind: TcpProxyKind,
    /// The proxy's `host:port`.
    pub addr: String,
    /// User name and password, if the proxy asks for them.
    pub credentials: Option<(String, Secret)>,
}

impl TcpProxy {
    /// Parses a proxy URL; the message says what is wrong. Percent-escapes are decoded in
    /// the user name and password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{}` is not a proxy URL: {why}", mask(url));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme (http:// or socks5://)"))?;
        let (kind, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => (TcpProxyKind::Http, 80),
            "socks5" | "socks5h" => (TcpProxyKind::Socks5, 1080),
            _ => return Err(bad("the scheme is http:// or socks5://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad("a proxy URL has no path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let credentials = match userinfo {
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let (user, password) = (unescape(user).ok_or_else(|| bad("bad %-escape"))?, unescape(password));
                Some((user, Secret::new(password.ok_or_else(|| bad("bad %-escape"))?)))
            }
            None => None,
        };
        let has_port = hostport.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
        let addr = if has_port { hostport.to_owned() } else { format!("{hostport}:{default_port}") };
        crate::client::split_host_port(&addr).map_err(|m| bad(&m))?;
        Ok(Self { kind, addr, credentials })
    }
}

impl TcpProxy {
    /// The URL, its password written as [`crate::now::MASKED`] (what `GET /now` shows).
    pub fn to_url_masked(&self) -> String {
        let scheme = match self.kind {
            TcpProxyKind::Http => "http",
            TcpProxyKind::Socks5 => "socks5",
        };
        match &self.credentials {
            Some((user, _)) => format!("{scheme}://{}:{}@{}", escape(user), crate::now::MASKED, self.addr),
            None => format!("{scheme}://{}", self.addr),
        }
    }
}

/// `text` with the characters a URL's user part cannot hold %-escaped.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b':' | b'@' | b'%' | b'/' => format!("%{b:02X}"),
            _ => char::from(b).to_string(),
        })
        .collect()
}

/// `url` with the password hidden, for messages.
fn mask(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, host))) => {
            let user = rest.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:…@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed one or bytes that are not UTF-8.
fn unescape(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_credentials_and_ports() {
        let p = TcpProxy::parse("http://alice:p%40ss@proxy.example:3128").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.kind, p.addr.as_str()), (TcpProxyKind::Http, "proxy.example:3128"));
        let (user, password) = p.credentials.unwrap_or_else(|| panic!("credentials"));
        assert_eq!((user.as_str(), password.expose()), ("alice", "p@ss"));
        let p = TcpProxy::parse("socks5://[::1]").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.kind, p.addr.as_str(), p.credentials), (TcpProxyKind::Socks5, "[::1]:1080", None));
        assert_eq!(TcpProxy::parse("http://10.0.0.1:8080/").map(|p| p.addr), Ok("10.0.0.1:8080".to_owned()));
    }

    #[test]
    fn the_masked_url_reads_back_with_its_secret_filled_in() {
        let p = TcpProxy::parse("socks5://a%3Ab:pw@h:1").unwrap_or_else(|e| panic!("{e}"));
        let mut url = toml::Value::String(p.to_url_masked());
        assert_eq!(url.as_str(), Some("socks5://a%3Ab:MASKED@h:1"));
        crate::now::fill_secrets(&mut url, "pw");
        assert_eq!(TcpProxy::parse(url.as_str().unwrap_or_default()), Ok(p));
    }

    #[test]
    fn bad_urls_say_why_and_never_show_the_password() {
        for url in
            ["proxy:3128", "ftp://proxy:21", "http://proxy:3128/path", "http://u:secret@:3128", "http://u:%zz@p:1"]
        {
            let e = TcpProxy::parse(url).err().unwrap_or_else(|| panic!("{url} parsed"));
            assert!(!e.contains("secret") && !e.contains("%zz"), "{e}");
        }
    }
}
