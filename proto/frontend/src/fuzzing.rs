//! Entry points for the fuzz targets (`fuzz/`), built only with the `fuzzing` feature: the
//! proxies' parsers of a user's bytes, on any byte stream instead of a socket, with an
//! upstream that refuses everything (nothing is dialed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;
use wmproxy_tunnel::udp::UdpStats;
use wmproxy_tunnel::upstream::{Ask, FlowRoute, OpenError, Opened, Upstream};

use crate::proxy::{ProxyKind, ProxySettings};

/// An upstream that reaches nothing.
#[derive(Debug)]
pub struct Refuse;

impl Upstream for Refuse {
    type By = ();

    async fn open(&self, _peer: SocketAddr, _ask: Ask) -> Result<Opened<()>, OpenError> {
        Err(OpenError::TunnelGone)
    }

    fn flow(&self, _peer: SocketAddr, _ask: Ask) -> Result<FlowRoute, OpenError> {
        Err(OpenError::TunnelGone)
    }
}

fn settings(kind: ProxyKind, credentials: Option<(&str, &str)>) -> ProxySettings {
    ProxySettings::new(kind, credentials, Duration::from_secs(1), Arc::new(UdpStats::default()))
}

/// The SOCKS5 greeting, authentication (with `credentials`, if given) and request read from
/// `io`: the command and the target, if a request was read.
pub async fn socks5_request<S>(io: S, credentials: Option<(&str, &str)>) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let proxy = settings(ProxyKind::Socks5, credentials);
    let (_, command, target) = crate::proxy::socks5::handshake(io, &proxy).await.ok()?;
    Some(format!("{command:?} {target}"))
}

/// Serves `io` as one HTTP proxy user (request heads, authentication, targets), every target
/// refused.
pub async fn http_proxy<S>(io: S, credentials: Option<(&str, &str)>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let proxy = settings(ProxyKind::Http, credentials);
    let peer = SocketAddr::from(([192, 0, 2, 1], 40_000));
    crate::proxy::http::serve(io, peer, proxy, Arc::new(Refuse), TaskTracker::new()).await;
}
