//! A SOCKS5 user (RFC 1928, with RFC 1929 username/password), on fast-socks5's server
//! protocol. CONNECT, and UDP ASSOCIATE where the upstream carries UDP
//! (`super::udp_associate`); names are resolved at the far end, where the egress policy is
//! checked after resolution. Every failure gets its RFC reply code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fast_socks5::server::{Socks5ServerProtocol, SocksServerError};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::{Span, debug};

use wmproxy_tunnel::datastream::DataStreamError;
use wmproxy_tunnel::listener::{Refusal, access_log};
use wmproxy_tunnel::relay::{Limits, RelayStats, Tally, relay_within};
use wmproxy_tunnel::{Ask, OpenError, Upstream};
use wmproxy_wire::{OpenResult, Target, auth};

use super::ProxySettings;

/// Serves one SOCKS5 user: greeting and request within the proxy's deadline, then the
/// server's dial, the reply, and the relay.
pub async fn serve<U: Upstream>(
    tcp: TcpStream,
    peer: SocketAddr,
    proxy: ProxySettings,
    upstream: Arc<U>,
    tracker: TaskTracker,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let request = tokio::time::timeout(proxy.handshake_timeout, handshake(tcp, &proxy)).await;
    let (protocol, command, target) = match request {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            let auth =
                matches!(e, SocksServerError::AuthenticationRejected | SocksServerError::AuthMethodUnacceptable(_));
            proxy.stats.refused(if auth { Refusal::Auth } else { Refusal::Request });
            return debug!(error = %e, "SOCKS5 handshake failed");
        }
        Err(_) => {
            proxy.stats.refused(Refusal::Request);
            return debug!("SOCKS5 handshake timed out; closing");
        }
    };
    if command == Socks5Command::UDPAssociate {
        let stats = &proxy.udp_stats;
        return super::udp_associate::run(protocol, (peer, local), &*upstream, stats, tracker, UDP_OPEN_TIMEOUT).await;
    }
    if command != Socks5Command::TCPConnect {
        proxy.stats.refused(Refusal::Request);
        debug!(?command, "unsupported SOCKS5 command");
        let _ = protocol.reply_error(&ReplyError::CommandNotSupported).await;
        return;
    }
    let target = match target {
        TargetAddr::Ip(addr) => Target::new(&addr.to_string()),
        TargetAddr::Domain(name, port) => Target::new(&format!("{name}:{port}")),
    };
    let Ok(target) = target else {
        proxy.stats.refused(Refusal::Request);
        let _ = protocol.reply_error(&ReplyError::AddressTypeNotSupported).await;
        return;
    };
    Span::current().record("target", target.as_str());
    let started = Instant::now();
    match upstream.open(peer, Ask::Target(target.clone())).await {
        Ok(opened) => {
            // The bound address is the server's business; clients ignore it for CONNECT.
            let Ok(tcp) = protocol.reply_success(SocketAddr::from(([0, 0, 0, 0], 0))).await else {
                return;
            };
            let tally = Tally::default();
            let meter = (&tally, &*proxy.stats);
            let limits = Limits { meter: Some(&meter), ..Limits::default() };
            let result = match relay_within(tcp, (opened.send, opened.recv), &limits).await {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("relay: {e}"),
            };
            access_log(&proxy.stats, (peer, target.as_str()), started, tally.stats(), &result);
            drop(opened.hold);
        }
        Err(e) => {
            debug!(error = %e, side = %e.side(), "target not reached");
            proxy.stats.refused(Refusal::of(&e));
            access_log(&proxy.stats, (peer, target.as_str()), started, RelayStats::default(), &e.to_string());
            let _ = protocol.reply_error(&reply_for(&e)).await;
        }
    }
}

/// Time for a UDP ASSOCIATE flow's stream to open and be answered.
const UDP_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type Request<S> = (Socks5ServerProtocol<S, fast_socks5::server::states::CommandRead>, Socks5Command, TargetAddr);

/// Method negotiation, authentication (if configured) and the request.
pub(crate) async fn handshake<S>(tcp: S, proxy: &ProxySettings) -> Result<Request<S>, SocksServerError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let authenticated = match &proxy.credentials {
        None => Socks5ServerProtocol::accept_no_auth(tcp).await?,
        Some(c) => {
            let check = |user: String, pass: String| {
                // Both compared in constant time, and both always compared.
                let user_ok = auth::same_secret(c.username.as_bytes(), user.as_bytes());
                let pass_ok = auth::same_secret(c.password.as_bytes(), pass.as_bytes());
                user_ok & pass_ok
            };
            Socks5ServerProtocol::accept_password_auth(tcp, check).await?.0
        }
    };
    authenticated.read_command().await
}

/// The RFC 1928 reply for a failed `Connect`.
fn reply_for(e: &OpenError) -> ReplyError {
    match e {
        OpenError::Refused(OpenResult::NotAllowed) => ReplyError::ConnectionNotAllowed,
        OpenError::Refused(OpenResult::Refused | OpenResult::Reset) => ReplyError::ConnectionRefused,
        OpenError::Refused(OpenResult::Unreachable) => ReplyError::HostUnreachable,
        OpenError::Refused(OpenResult::Timeout) | OpenError::Failed(DataStreamError::Timeout) => ReplyError::TtlExpired,
        // No tunnel to the far end, or it went away.
        OpenError::TunnelGone | OpenError::Failed(DataStreamError::Connection(_)) => ReplyError::NetworkUnreachable,
        _ => ReplyError::GeneralFailure,
    }
}
