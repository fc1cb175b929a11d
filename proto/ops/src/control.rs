//! The control API both ends serve on loopback (hyper, HTTP/1.1), and the CLI side that calls it.
//!
//! The dashboard's files ([`crate::dashboard`]) are served to anyone: they hold no data. Every
//! other request must carry `Authorization: Bearer <token>`; a missing or wrong token gets `401`
//! (compared in constant time) before the request is looked at. A path that is not one of the
//! end's [`ControlApi::ROUTES`] gets `404`. Request bodies are capped at [`MAX_BODY`] and must
//! arrive within [`READ_TIMEOUT`]. Replies are JSON, or Prometheus text for `/metrics`. What
//! each path does is the [`ControlApi`] implementation's business: the server's and the
//! client's differ.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use wmproxy_wire::auth::same_secret;

use crate::dashboard::{self, Page};
use crate::routes::{self, Route};

/// Largest request body (a config for `/adapt`).
pub const MAX_BODY: usize = 1024 * 1024;
/// Time a caller has to send a request head, and then its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer of the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// `value` as JSON.
    pub fn json(status: StatusCode, value: &impl Serialize) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Self { status, content_type: "application/json", body },
            Err(e) => Self::error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode the reply: {e}")),
        }
    }

    /// `{"error": message}`.
    pub fn error(status: StatusCode, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self { status, content_type: "application/json", body }
    }

    /// `404` for a path this API does not have.
    pub fn not_found(method: &Method, path: &str) -> Self {
        Self::error(StatusCode::NOT_FOUND, &format!("no such endpoint: {method} {path}"))
    }

    /// The answer to validating a config: `200 {"valid": true}`, or `422 {"valid": false,
    /// "error": …}` (config errors name the key and line).
    pub fn verdict<E: std::fmt::Display>(checked: Result<(), E>) -> Self {
        match checked {
            Ok(()) => Self::json(StatusCode::OK, &serde_json::json!({ "valid": true })),
            Err(e) => Self::json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({ "valid": false, "error": e.to_string() }),
            ),
        }
    }

    /// `POST /adapt`: validates the body with `parse`, or, when the body is empty, the config
    /// file at `path` with `load`; applies nothing.
    pub fn adapt<T, E: std::fmt::Display>(
        body: &[u8],
        path: Option<&std::path::Path>,
        load: impl FnOnce(&std::path::Path) -> Result<T, E>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Self {
        let checked = if body.is_empty() {
            let Some(path) = path else {
                return Self::error(StatusCode::BAD_REQUEST, "no config file to read: send one as the body");
            };
            load(path)
        } else {
            match std::str::from_utf8(body) {
                Ok(text) => parse(text),
                Err(_) => return Self::error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"),
            }
        };
        Self::verdict(checked.map(|_| ()))
    }

    /// Prometheus text exposition.
    pub fn metrics(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        }
    }
}

/// One service's registration result, as both ends' `/status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// `ok`, `joined`, `private` or why the server refused it.
    pub outcome: String,
    /// Its public port, once published.
    pub port: Option<u16>,
    /// For an HTTP, HTTPS or WebSocket service, the names and paths it is reached by.
    #[serde(flatten)]
    pub http: Option<HttpNames>,
}

impl From<&wmproxy_wire::ServiceResult> for ServiceStatus {
    fn from(result: &wmproxy_wire::ServiceResult) -> Self {
        use wmproxy_wire::RegisterOutcome;
        let (outcome, port) = match &result.outcome {
            RegisterOutcome::Ok { port } => ("ok".to_owned(), Some(*port)),
            RegisterOutcome::Joined { port } => ("joined".to_owned(), Some(*port)),
            RegisterOutcome::Private => ("private".to_owned(), None),
            refused => (refused.to_string(), None),
        };
        Self { name: result.name.to_string(), outcome, port, http: None }
    }
}

impl ServiceStatus {
    /// The status with the names and paths of an HTTP service.
    #[must_use]
    pub fn with_http(mut self, http: Option<HttpNames>) -> Self {
        self.http = http;
        self
    }
}

/// What a service or group on the vhost or HTTPS port is reached by: its host names, its
/// subdomain (under the server's `subdomain_host`) and its paths. No credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpNames {
    /// Host names (`example.com`, `*.example.com`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// A name under the server's `subdomain_host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Path prefixes (every path when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<String>,
}

impl From<&wmproxy_wire::HttpSpec> for HttpNames {
    fn from(spec: &wmproxy_wire::HttpSpec) -> Self {
        Self {
            domains: spec.custom_domains.clone(),
            subdomain: spec.subdomain.clone(),
            locations: spec.locations.clone(),
        }
    }
}

/// What an end does with an authenticated control request.
pub trait ControlApi: Send + Sync + 'static {
    /// Every route the end answers; any other path is `404` without a call to [`Self::handle`].
    const ROUTES: &'static [Route];
    /// The end's dashboard page.
    const PAGE: Page;

    /// Answers `method path` with `body` (empty when none was sent).
    fn handle(&self, method: Method, path: String, body: Bytes) -> impl Future<Output = Reply> + Send;
}

/// Serves the control API on `listener` until `shutdown`. Connections run as tasks of `tracker`.
pub async fn serve<A: ControlApi>(
    listener: TcpListener,
    token: String,
    api: Arc<A>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // What a caller's `Authorization` header must equal; never logged.
    let expected: Arc<str> = format!("Bearer {token}").into();
    while let Some((tcp, peer)) = wmproxy_tunnel::accept::next(&listener, &shutdown).await {
        let task = connection(tcp, peer, expected.clone(), api.clone(), shutdown.clone());
        tracker.spawn(task.instrument(info_span!("control", %peer)));
    }
}

async fn connection<A: ControlApi>(
    tcp: TcpStream,
    peer: SocketAddr,
    expected: Arc<str>,
    api: Arc<A>,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req| {
        let (expected, api) = (expected.clone(), api.clone());
        async move { Ok::<_, Infallible>(answer(req, &expected, &*api).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        debug!(%peer, error = %e, "control connection ended");
    }
}

async fn answer<A: ControlApi>(req: Request<Incoming>, expected: &str, api: &A) -> Response<Full<Bytes>> {
    let given = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
    let reply = if let Some((content_type, body)) = dashboard::asset(&A::PAGE, req.method(), req.uri().path()) {
        Reply { status: StatusCode::OK, content_type, body }
    } else if !same_secret(expected.as_bytes(), given) {
        Reply::error(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <token>` header is required")
    } else if routes::find(A::ROUTES, req.method(), req.uri().path()).is_none() {
        Reply::not_found(req.method(), req.uri().path())
    } else {
        let (parts, body) = req.into_parts();
        match tokio::time::timeout(READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(body)) => api.handle(parts.method, parts.uri.path().to_owned(), body.to_bytes()).await,
            Ok(Err(_)) => Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large or broken"),
            Err(_) => Reply::error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = reply.status;
    if reply.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

/// The page may load its own files and call its own API, nothing else; no page may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Compares what an end serves, `routes` (its [`ControlApi::ROUTES`]) and the dashboard's, with
/// the paths of an OpenAPI document (JSON): `Err` names each route missing from the document
/// and each documented one that is not served.
pub fn check_openapi(routes: &[Route], openapi: &str) -> Result<(), String> {
    use std::collections::BTreeSet;
    let doc: serde_json::Value = serde_json::from_str(openapi).map_err(|e| format!("not JSON: {e}"))?;
    let paths = doc.get("paths").and_then(serde_json::Value::as_object).ok_or("no `paths` object")?;
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().into_iter().flat_map(|m| m.keys());
            methods.map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> =
        routes.iter().chain(dashboard::ROUTES).map(|r| (r.method.to_owned(), r.path.to_owned())).collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!("served but not documented: {missing:?}; documented but not served: {extra:?}"))
    }
}

/// Why [`call`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The control address refused or failed.
    #[error("cannot reach the control API at {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("control API request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a path that is not a URI).
    #[error("control API request is malformed: {0}")]
    Request(#[from] hyper::http::Error),
    /// The answer's body could not be read (or was over the limit).
    #[error("control API answer unreadable: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Sends one request to a control API (the CLI's `status`, `reload`, `stop`, …); returns the
/// status code and body. `token` is sent as the bearer token, when given.
pub async fn call(
    addr: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(u16, String), CallError> {
    let tcp = TcpStream::connect(addr).await.map_err(|source| CallError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn.in_current_span());
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), 64 * MAX_BODY).collect().await.map_err(CallError::Body)?;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An end with two routes.
    struct Two;

    impl ControlApi for Two {
        const ROUTES: &'static [Route] = &[Route::get("/status"), Route::post("/backends/{backend}/drain")];
        const PAGE: Page = Page { title: "two", script: "" };

        async fn handle(&self, method: Method, path: String, _: Bytes) -> Reply {
            Reply::not_found(&method, &path)
        }
    }

    #[test]
    fn an_openapi_file_must_list_exactly_what_is_served() {
        let doc = |paths: &str| {
            format!(
                r#"{{"paths": {{ "/": {{"get": {{}}}}, "/ui/style.css": {{"get": {{}}}}, "/ui/common.js": {{"get": {{}}}}, "/ui/page.js": {{"get": {{}}}} {paths} }}}}"#
            )
        };
        let full = doc(r#", "/status": {"get": {}}, "/backends/{backend}/drain": {"post": {}}"#);
        assert_eq!(check_openapi(Two::ROUTES, &full), Ok(()));
        let short = doc(r#", "/status": {"get": {}}"#);
        assert!(check_openapi(Two::ROUTES, &short).is_err_and(|e| e.contains("/backends/{backend}/drain")));
        let wrong_method = doc(r#", "/status": {"post": {}}, "/backends/{backend}/drain": {"post": {}}"#);
        assert!(check_openapi(Two::ROUTES, &wrong_method).is_err());
    }
}
