//! An HTTP proxy user, on hyper: `CONNECT host:port` (a tunnel) and absolute-form requests
//! (`GET http://host/…`, forwarded with hop-by-hop headers removed). Each request's target is
//! dialed by the far end under its egress policy.
//!
//! Answers: `407` (with `Proxy-Authenticate`) for missing or wrong credentials, before any
//! dial; `400` for a malformed request and `431` for oversized headers (hyper's parser);
//! `403` for a target the policy denies; `502` for one that cannot be reached; `504` for a
//! timeout. A client silent in its headers is closed after the proxy's handshake timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug};
use wmproxy_tunnel::listener::{ListenerStats, Metered, Refusal, access_log};
use wmproxy_tunnel::relay::{Limits, Meter, RelayStats, Tally, relay_within};
use wmproxy_tunnel::upstream::Hold;
use wmproxy_tunnel::{Ask, OpenError, Upstream};
use wmproxy_tunnel::{RecvStream, SendStream};
use wmproxy_wire::{OpenResult, Target, auth};

use super::ProxySettings;
use crate::http::{Body, basic_authorization, empty, plain, strip_hop_by_hop};

/// Largest request head accepted; beyond it hyper answers `431`.
const MAX_HEAD: usize = 16 * 1024;

/// A CONNECT whose tunnel is open, waiting for hyper to hand over the client's connection.
type PendingTunnel = Arc<Mutex<Option<(hyper::upgrade::OnUpgrade, SendStream, RecvStream, Hold, Target)>>>;

/// Serves one HTTP proxy user (keep-alive: several requests) until it leaves.
pub async fn serve<U, I>(tcp: I, peer: SocketAddr, proxy: ProxySettings, upstream: Arc<U>, tracker: TaskTracker)
where
    U: Upstream,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let expected = proxy.credentials.as_ref().map(|c| basic_authorization(&c.username, &c.password));
    let pending: PendingTunnel = Arc::default();
    let stats = proxy.stats.clone();
    let service = {
        let pending = pending.clone();
        service_fn(move |req| {
            let (upstream, expected, pending, tracker, stats) =
                (upstream.clone(), expected.clone(), pending.clone(), tracker.clone(), stats.clone());
            async move {
                let user = User { peer, stats: &stats, tracker: &tracker };
                Ok::<_, Infallible>(handle(req, user, &*upstream, expected.as_deref(), &pending).await)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(proxy.handshake_timeout).max_buf_size(MAX_HEAD);
    if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).with_upgrades().await {
        debug!(error = %e, "HTTP proxy connection ended");
    }
    // A CONNECT that succeeded: relay its tunnel here, in this (tracked) task.
    let tunnel = pending.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((upgrade, send, recv, hold, target)) = tunnel {
        let started = Instant::now();
        let tally = Tally::default();
        let result = tunnel_relay(upgrade, (send, recv), (&tally, &*proxy.stats)).await;
        access_log(&proxy.stats, (peer, target.as_str()), started, tally.stats(), &result);
        drop(hold);
    }
}

/// Who sent a request, and where its connection is counted.
struct User<'a> {
    peer: SocketAddr,
    stats: &'a Arc<ListenerStats>,
    tracker: &'a TaskTracker,
}

async fn handle<U: Upstream>(
    req: Request<Incoming>,
    user: User<'_>,
    upstream: &U,
    expected: Option<&str>,
    pending: &PendingTunnel,
) -> Response<Body> {
    let peer = user.peer;
    if let Some(expected) = expected {
        let given = req.headers().get(header::PROXY_AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        if !auth::same_secret(expected.as_bytes(), given) {
            user.stats.refused(Refusal::Auth);
            let mut response = plain(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy authentication required\n");
            response
                .headers_mut()
                .insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"wmproxy\""));
            return response;
        }
    }
    let Some(target) = target_of(&req) else {
        user.stats.refused(Refusal::Request);
        return plain(StatusCode::BAD_REQUEST, "absolute-form URI (http://host/…) or CONNECT host:port expected\n");
    };
    Span::current().record("target", target.as_str());
    let started = Instant::now();
    let opened = match upstream.open(peer, Ask::Target(target.clone())).await {
        Ok(opened) => opened,
        Err(e) => {
            debug!(error = %e, side = %e.side(), "target not reached");
            user.stats.refused(Refusal::of(&e));
            access_log(user.stats, (peer, target.as_str()), started, RelayStats::default(), &e.to_string());
            return refusal(&e);
        }
    };
    if req.method() == Method::CONNECT {
        let tunnel = (hyper::upgrade::on(req), opened.send, opened.recv, opened.hold, target);
        *pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
        return Response::new(empty());
    }
    forward(req, (opened.send, opened.recv, opened.hold), (&user, target), started).await
}

/// `host:port` of a CONNECT (authority-form) or absolute-form `http://` request.
fn target_of(req: &Request<Incoming>) -> Option<Target> {
    let uri = req.uri();
    let authority = uri.authority()?;
    if req.method() == Method::CONNECT {
        authority.port_u16()?;
        return Target::new(authority.as_str()).ok();
    }
    if uri.scheme_str() != Some("http") {
        return None;
    }
    Target::new(&format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80))).ok()
}

/// Sends an absolute-form request to its target over the tunnel stream (origin-form, hop-by-hop
/// headers removed) and returns the target's response. Its access log line is written when the
/// upstream connection ends (the response body has gone by then), with the bytes that passed.
async fn forward(
    mut req: Request<Incoming>,
    (send, recv, hold): (SendStream, RecvStream, Hold),
    (user, target): (&User<'_>, Target),
    started: Instant,
) -> Response<Body> {
    let tally = Arc::new(Tally::default());
    let meter = (tally.clone(), user.stats.clone());
    let io = TokioIo::new(Metered::new(tokio::io::join(recv, send), meter));
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(pair) => pair,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    };
    let (stats, peer) = (user.stats.clone(), user.peer);
    user.tracker.spawn(
        async move {
            let result = match connection.await {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("upstream: {e}"),
            };
            access_log(&stats, (peer, target.as_str()), started, tally.stats(), &result);
            drop(hold);
        }
        .in_current_span(),
    );
    let origin_form = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *req.uri_mut() = origin_form.parse::<Uri>().unwrap_or_default();
    strip_hop_by_hop(req.headers_mut());
    match sender.send_request(req).await {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response.map(BodyExt::boxed_unsync)
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    }
}

/// Relays a CONNECT tunnel once hyper hands over the client's connection, counting its bytes
/// in `meter`; returns the result for the access log.
async fn tunnel_relay(
    upgrade: hyper::upgrade::OnUpgrade,
    (mut send, recv): (SendStream, RecvStream),
    meter: impl Meter,
) -> String {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => return format!("CONNECT upgrade failed: {e}"),
    };
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        return "CONNECT upgrade is not a TCP stream".to_owned();
    };
    // Bytes the client sent right behind its CONNECT head.
    if !parts.read_buf.is_empty() {
        if let Err(e) = send.write_all(&parts.read_buf).await {
            return format!("relay: {e}");
        }
        meter.passed(parts.read_buf.len() as u64, 0);
    }
    let limits = Limits { meter: Some(&meter), ..Limits::default() };
    match relay_within(parts.io.into_inner(), (send, recv), &limits).await {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("relay: {e}"),
    }
}

/// The answer for a target the far end did not reach.
fn refusal(e: &OpenError) -> Response<Body> {
    use wmproxy_tunnel::datastream::DataStreamError;
    match e {
        OpenError::Refused(OpenResult::NotAllowed) => plain(StatusCode::FORBIDDEN, "target not allowed\n"),
        OpenError::Refused(OpenResult::Timeout) | OpenError::Failed(DataStreamError::Timeout) => {
            plain(StatusCode::GATEWAY_TIMEOUT, "target timed out\n")
        }
        _ => plain(StatusCode::BAD_GATEWAY, &format!("{e}\n")),
    }
}
