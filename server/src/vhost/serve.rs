//! The vhost port: HTTP/1.1 with keep-alive (hyper). Every request is routed by its own
//! `Host` (and path), so two requests on one connection may reach two services; each goes
//! over its own data stream to the client that serves it. `Upgrade` requests (WebSocket) are
//! passed through, and after a `101` both sides are relayed until either closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};
use wmproxy_config::vhost::normalize_host;
use wmproxy_frontend::http::{Body, plain, strip_hop_by_hop};
use wmproxy_tunnel::{Ask, OpenError, Upstream};

use super::body::TimedBody;
use crate::metrics::Refusal;
use crate::routes::Routes;
use crate::runtime::Serving;

/// What the vhost and HTTPS ports use.
#[derive(Debug, Clone)]
pub(crate) struct Vhost {
    /// The routes, by host.
    pub routes: Arc<Routes>,
    /// Where users' tasks run, timeouts and counters.
    pub serving: Serving,
    /// Time a user has to send a request head (or a ClientHello).
    pub header_read_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// `[vhost.tls]`: the HTTPS port terminates TLS for names no `https` route claims.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests per user, over the vhost and the terminating HTTPS port together.
    pub rate: Arc<super::rate::RequestRate>,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
}

/// Accepts users on the vhost port until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, vhost: Vhost, shutdown: CancellationToken) {
    let users = vhost.serving.users.clone();
    while let Some((tcp, peer, permit)) = wmproxy_tunnel::accept::next_user(&listener, &shutdown, &users).await {
        let span = info_span!("vhost_user", %peer);
        let vhost = vhost.clone();
        let tracker = vhost.serving.runtime.tracker.clone();
        tracker.spawn(
            async move {
                if vhost.serving.silent.first_bytes(&tcp, vhost.header_read_timeout).await {
                    connection(tcp, peer, Scheme::Http, vhost).await;
                }
                drop(permit)
            }
            .instrument(span),
        );
    }
}

/// How the user reached the vhost: plain, or TLS terminated at the HTTPS port.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// Serves one user connection (several requests, keep-alive) until it closes.
pub(crate) async fn connection<I>(io: I, peer: SocketAddr, scheme: Scheme, vhost: Vhost)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (timeout, max_head) = (vhost.header_read_timeout, vhost.max_header_bytes);
    let vhost = Arc::new(vhost);
    let service = service_fn(move |req| {
        let vhost = vhost.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, scheme, &vhost).await) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeout).max_buf_size(max_head);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).with_upgrades().await {
        debug!(error = %e, "vhost connection ended");
    }
}

/// Routes one request and forwards it.
async fn handle(mut req: Request<Incoming>, peer: SocketAddr, scheme: Scheme, vhost: &Vhost) -> Response<Body> {
    if let Err(wait) = vhost.rate.take(peer.ip(), std::time::Instant::now()) {
        vhost.serving.metrics.refused(Refusal::RequestRate);
        let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests from your address; slow down\n");
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return response;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return plain(StatusCode::BAD_REQUEST, "a Host header is required\n");
    };
    let Some(route) = vhost.routes.find(&normalize_host(&host), req.uri().path(), false) else {
        return plain(StatusCode::NOT_FOUND, "no service is published for this host\n");
    };
    let route = &route.template;
    if let Some(expected) = &route.authorization {
        let given = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        if !wmproxy_wire::auth::same_secret(expected.as_bytes(), given) {
            let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"wmproxy\""));
            return response;
        }
    }
    if route.bridge && !is_websocket(&req) {
        return plain(StatusCode::BAD_REQUEST, "this address takes WebSocket connections only\n");
    }
    let opened = match route.target.open(peer, Ask::Service).await {
        Ok(opened) => opened,
        Err(e) => {
            debug!(error = %e, side = %e.side(), "service not reached");
            vhost.serving.metrics.open_failed(e.side());
            return match e {
                OpenError::Busy => plain(StatusCode::SERVICE_UNAVAILABLE, "the service is busy\n"),
                OpenError::NoneEligible => {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend serves this host\n")
                }
                _ => plain(StatusCode::BAD_GATEWAY, "the service could not be reached\n"),
            };
        }
    };
    let (send, recv, hold, served) = (opened.send, opened.recv, opened.hold, opened.by);
    let tracker = &vhost.serving.runtime.tracker;

    if route.bridge {
        return accept_bridge(req, send, recv, hold, tracker);
    }
    let upgrading = req.headers().contains_key(header::UPGRADE);
    if !upgrading {
        strip_hop_by_hop(req.headers_mut());
    }
    let headers = req.headers_mut();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert("x-forwarded-host", v);
    }
    if let Some(rewrite) = route.host_rewrite.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, rewrite);
    }
    let user_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

    let counted = vhost.serving.metrics.stream(&served.client, &served.service);
    // Writes are the user's bytes to the service, reads its answer: counted as they pass.
    let io = TokioIo::new(wmproxy_tunnel::listener::Metered::new(tokio::io::join(recv, send), counted));
    let (mut sender, backend) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    };
    // The stream permit is held until the backend connection ends, and, for an upgrade, until
    // the upgraded connection ends too (the backend connection hands its bytes over then).
    // (A mutex only to make the shared hold `Sync`; it is never locked.)
    let hold = Arc::new(std::sync::Mutex::new(hold));
    let backend_hold = hold.clone();
    tracker.spawn(
        async move {
            if let Err(e) = backend.with_upgrades().await {
                debug!(error = %e, "backend connection ended");
            }
            drop(backend_hold);
        }
        .in_current_span(),
    );
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|body| TimedBody::new(body, vhost.body_timeout, fired.clone()));
    let mut response = match sender.send_request(req).await {
        Ok(response) => response,
        Err(_) if fired.load(std::sync::atomic::Ordering::Relaxed) => {
            return plain(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n");
        }
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(user_upgrade) = user_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            let relayed = async move {
                relay_upgraded(user_upgrade, backend_upgrade).await;
                drop(hold);
            };
            tracker.spawn(relayed.in_current_span());
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
    response.map(http_body_util::BodyExt::boxed_unsync)
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Accepts the user's WebSocket (the `101` answer) and bridges it, once upgraded, to the data
/// stream of a `ws` service.
fn accept_bridge(
    mut req: Request<Incoming>,
    send: wmproxy_tunnel::SendStream,
    recv: wmproxy_tunnel::RecvStream,
    hold: impl Send + 'static,
    tracker: &tokio_util::task::TaskTracker,
) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tracker.spawn(
        async move {
            let Ok(upgraded) = upgrade.await else {
                return debug!("WebSocket upgrade did not complete");
            };
            let role = tokio_tungstenite::tungstenite::protocol::Role::Server;
            let config = Some(wmproxy_frontend::wsbridge::config());
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), role, config).await;
            let (from_ws, to_ws) = wmproxy_frontend::wsbridge::bridge(ws, tokio::io::join(recv, send)).await;
            debug!(from_ws, to_ws, "WebSocket bridge finished");
            drop(hold);
        }
        .in_current_span(),
    );
    let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

/// Relays an upgraded connection (WebSocket) both ways until either side closes.
async fn relay_upgraded(user: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (Ok(user), Ok(backend)) = (user.await, backend.await) else {
        return debug!("upgrade did not complete");
    };
    let (mut user, mut backend) = (TokioIo::new(user), TokioIo::new(backend));
    match tokio::io::copy_bidirectional(&mut user, &mut backend).await {
        Ok((up, down)) => debug!(up, down, "upgraded connection finished"),
        Err(e) => debug!(error = %e, "upgraded connection ended"),
    }
}
