//! The vhost port (HTTP/1.1, every request routed by its own `Host` and path) and the HTTPS
//! port (every connection routed by its TLS SNI; with `[vhost.tls]`, a name no `https` route
//! claims is terminated here and served like the vhost port). Both look their routes up in
//! [`crate::routes::Routes`] and reach them through the route's upstream.
//!
//! - `serve`: the vhost port (hyper), one data stream per request; WebSocket upgrades passed
//!   through, `ws` routes bridged.
//! - `sni`: the HTTPS port: reads the ClientHello (rustls's `Acceptor`), then passes every
//!   byte through, or terminates TLS.
//! - `rate`: the per-user request rate (`429` with `Retry-After`).
//! - `body`: the request-body timeout (`408`).

mod body;
mod rate;
mod serve;
mod sni;

pub(crate) use self::rate::RequestRate;
pub(crate) use self::serve::{Vhost, serve};
#[cfg(feature = "fuzzing")]
pub(crate) use self::sni::client_hello;
pub(crate) use self::sni::serve as serve_tls;
