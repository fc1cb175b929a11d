//! Entry points for the fuzz targets (`fuzz/`), built only with the `fuzzing` feature: the
//! server's parsers of public bytes, without sockets.

use std::sync::Arc;

use wmproxy_config::vhost::normalize_host;

use crate::groups::Group;
use crate::routes::{RouteHandle, RouteOwner, RouteTarget, Routes, Template};

/// The host name of the TLS ClientHello at the start of `io`, as the HTTPS port reads it;
/// `None` when it is not one (the port closes the connection).
pub async fn client_hello<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> Option<Option<String>> {
    crate::vhost::client_hello(io).await.ok().map(|(sni, _)| sni)
}

/// A vhost index with exact, wildcard and nested routes, on the HTTP and HTTPS sides.
#[derive(Debug)]
pub struct RouteTable {
    routes: Arc<Routes>,
    _held: Vec<RouteHandle>,
}

impl Default for RouteTable {
    fn default() -> Self {
        let routes = Arc::new(Routes::default());
        let template = |tls| Template {
            tls,
            bridge: false,
            target: RouteTarget::Group(Arc::new(Group::for_tests("fuzz"))),
            host_rewrite: None,
            authorization: None,
        };
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let mut held = Vec::new();
        let claims: [(u64, bool, &[&str], &[&str]); 4] = [
            (1, false, &["*.example.com", "example.com"], &["/"]),
            (2, false, &["a.b.example.com"], &["/api", "/docs/", "/"]),
            (3, false, &["*.b.example.com", "xn--bcher-kva.example"], &["/x/y/z"]),
            (4, true, &["secure.example.com", "*.tls.example"], &["/"]),
        ];
        for (owner, tls, hosts, paths) in claims {
            if let Ok(handle) =
                routes.claim(RouteOwner::Session(owner), &template(tls), (&strings(hosts), &strings(paths)), 256)
            {
                held.push(handle);
            }
        }
        Self { routes, _held: held }
    }
}

impl RouteTable {
    /// What the vhost does with a request's `Host` header (or, without one, its URI's
    /// authority) and its path: the route found, as `host` + `location`.
    pub fn find(&self, host_header: Option<&str>, uri: &str, tls: bool) -> Option<String> {
        let uri: hyper::Uri = uri.parse().ok()?;
        let host = host_header.map(str::to_owned).or_else(|| uri.authority().map(|a| a.as_str().to_owned()))?;
        Some(self.routes.find(&normalize_host(&host), uri.path(), tls)?.name())
    }
}
