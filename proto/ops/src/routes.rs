//! The control API's routes. Each end lists every route it serves in
//! [`ControlApi::ROUTES`](crate::control::ControlApi::ROUTES); a request that matches none is
//! answered `404` before the end sees it, so the list is the whole API, and the OpenAPI files in
//! `docs/openapi/` are tested against it
//! ([`check_openapi`](crate::control::check_openapi)).

use hyper::Method;

/// One route: a method and a path pattern. A segment `{name}` matches any one non-empty
/// segment; every other segment matches itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The pattern, as the OpenAPI file writes it (`/backends/{backend}/drain`).
    pub path: &'static str,
}

impl Route {
    /// `GET path`.
    pub const fn get(path: &'static str) -> Self {
        Self { method: "GET", path }
    }

    /// `POST path`.
    pub const fn post(path: &'static str) -> Self {
        Self { method: "POST", path }
    }

    /// Whether `method path` is this route.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if method.as_str() != self.method {
            return false;
        }
        let (mut pattern, mut given) = (self.path.split('/'), path.split('/'));
        loop {
            match (pattern.next(), given.next()) {
                (None, None) => return true,
                (Some(p), Some(g)) if p.starts_with('{') && p.ends_with('}') && !g.is_empty() => {}
                (Some(p), Some(g)) if p == g => {}
                _ => return false,
            }
        }
    }
}

/// The route of `routes` that `method path` is, if any.
pub fn find<'a>(routes: &'a [Route], method: &Method, path: &str) -> Option<&'a Route> {
    routes.iter().find(|route| route.matches(method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_matches_one_non_empty_segment_per_name() {
        let drain = Route::post("/backends/{backend}/drain");
        assert!(drain.matches(&Method::POST, "/backends/home:web/drain"));
        assert!(!drain.matches(&Method::GET, "/backends/home:web/drain"), "the method counts");
        assert!(!drain.matches(&Method::POST, "/backends//drain"), "an empty segment is no name");
        assert!(!drain.matches(&Method::POST, "/backends/a/b/drain"), "a name is one segment");
        assert!(!drain.matches(&Method::POST, "/backends/home:web/drain/"), "no trailing segment");
        assert!(Route::get("/").matches(&Method::GET, "/"));
        assert!(!Route::get("/").matches(&Method::GET, "/status"));
        assert_eq!(find(&[Route::get("/status"), drain], &Method::GET, "/status"), Some(&Route::get("/status")));
        assert_eq!(find(&[Route::get("/status")], &Method::GET, "/statuses"), None);
    }
}
