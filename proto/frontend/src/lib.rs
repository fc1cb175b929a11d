//! The user-facing protocols both wmproxy ends serve, apart from the tunnel itself: SOCKS5
//! and HTTP proxies, the HTTP helpers the server's vhost shares with them, and the WebSocket
//! byte bridge.
//!
//! # Layout
//! - [`proxy`]: SOCKS5 (fast-socks5) and HTTP (hyper) proxy front-ends. A user's target goes to
//!   the listener's [`wmproxy_tunnel::Upstream`] as [`wmproxy_tunnel::Ask::Target`]; the far
//!   end's answer becomes the proxy's own (a SOCKS5 reply code, an HTTP status).
//! - [`http`]: small HTTP pieces (plain answers, hop-by-hop headers, Basic credentials).
//! - [`wsbridge`]: a byte stream carried as WebSocket binary messages (the ws↔tcp bridge).
//!
//! Data flow: [`proxy::serve`] accepts a user, runs its handshake in the user's own task under
//! the proxy's deadline, asks the upstream to open a stream to the target, answers, and relays
//! ([`wmproxy_tunnel::relay`]).
#![forbid(unsafe_code)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod proxy;
pub mod wsbridge;
