//! The vhost port (HTTP/1.1, every request routed by its own `Host` and path) and the HTTPS
//! port (every connection routed by its TLS SNI; with `[vhost.tls]`, a name no `https` route
//! claims is terminated here and served like the vhost port). Both look their routes up in
//! [`crate::routes::Routes`] and reach them through the route's upstream.
//!
//! - `serve`: the vhost port (hyper), one data stream per request; WebSocket upgrades passed
//!   through, `ws` routes bridged.
//! - `sni`: the HTTPS port: reads the ClientHello (rustls's `Acceptor`), then passes every
//!   byte through, or terminates TLS.

mod serve;
mod sni;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::serve::serve;
pub(crate) use self::sni::serve as serve_tls;
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
}
