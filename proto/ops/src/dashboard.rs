//! The dashboard each control port serves at `/`: one HTML page, a stylesheet, a script both
//! ends share (`common.js`: the login, API calls, polling, the chart) and the end's own script
//! ([`Page::script`]). All of it is embedded in the binary: no CDN, no build step.
//!
//! The page holds no data, so it is served without the token. It asks for the token, keeps it
//! in the tab's `sessionStorage` (no cookie, so no other site can make the browser send it) and
//! sends it as the bearer token with each API call; a wrong one is refused by the API (`401`)
//! and the page asks again. Every answer forbids framing and sniffing, and the page's
//! Content-Security-Policy lets it load only its own files.

use hyper::Method;

use crate::routes::Route;

/// One end's dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The page's title (`wmproxy server`).
    pub title: &'static str,
    /// The end's script: it defines `start(api)`, which `common.js` calls once logged in.
    pub script: &'static str,
}

const INDEX: &str = include_str!("dashboard/index.html");
const COMMON: &str = include_str!("dashboard/common.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The dashboard's routes, served without the token.
pub const ROUTES: &[Route] =
    &[Route::get("/"), Route::get("/ui/style.css"), Route::get("/ui/common.js"), Route::get("/ui/page.js")];

/// The dashboard's answer to `method path`, if it is one of [`ROUTES`]: its content type and
/// body.
pub fn asset(page: &Page, method: &Method, path: &str) -> Option<(&'static str, String)> {
    if method != Method::GET {
        return None;
    }
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", INDEX.replace("{{title}}", page.title)),
        "/ui/style.css" => ("text/css; charset=utf-8", STYLE.to_owned()),
        "/ui/common.js" => ("text/javascript; charset=utf-8", COMMON.to_owned()),
        "/ui/page.js" => ("text/javascript; charset=utf-8", page.script.to_owned()),
        _ => return None,
    };
    Some((content_type, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_an_asset_and_nothing_else_does() {
        let page = Page { title: "wmproxy test", script: "function start() {}" };
        for route in ROUTES {
            assert!(asset(&page, &Method::GET, route.path).is_some(), "{}", route.path);
        }
        assert!(asset(&page, &Method::GET, "/").is_some_and(|(_, body)| body.contains("<title>wmproxy test</title>")));
        assert!(asset(&page, &Method::POST, "/").is_none());
        assert!(asset(&page, &Method::GET, "/ui/other.js").is_none());
        assert!(asset(&page, &Method::GET, "/status").is_none());
    }
}
