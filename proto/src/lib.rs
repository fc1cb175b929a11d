//! What the wmproxy server and client share.
//!
//! # Layout
//! - [`wire`]: the protocol, sans-IO. Message types, length-prefixed framing (decoders that
//!   never panic and cap every length) and the auth proof. No sockets, no runtime.
//! - [`stream`]: reads and writes [`wire`] frames on async streams (quinn's send/receive halves),
//!   reading exactly one frame and never past it.
//! - [`tls`]: certificate fingerprints and the pinned-fingerprint verifier.
//! - [`transport`]: the tuned quinn `TransportConfig` and UDP socket setup both ends use.
//! - [`accept`]: the accept step of every TCP listener (stop token, error backoff).
//! - [`datastream`]: the life of a data stream on both ends (open, header, answer, relay).
//! - [`proxy`]: SOCKS5 (fast-socks5) and HTTP (hyper) proxy front-ends; the target goes to an
//!   [`proxy::Upstream`] that opens a stream through a tunnel.
//! - [`dial`]: connects to a `host:port` target and maps failures to [`wire::OpenResult`].
//! - [`shutdown`]: process signals to a cancellation token, for both binaries.
//! - [`cli`]: the rest both binaries' `main` share (logging, `check`, the runtime).
//! - [`control`]: the loopback control API (bearer token, JSON) and the CLI's calls to it.
//! - [`metrics`]: Prometheus metrics both ends expose (UDP counters).
//! - [`relay`]: copies bytes between a TCP socket and a QUIC stream, both ways, honouring
//!   half-close and allocating buffers only while data flows.
//! - [`wsbridge`]: a byte stream carried as WebSocket binary messages (the ws↔tcp bridge).
//! - [`udp`]: UDP flows: QUIC datagrams tagged with a flow id, flow tables with idle sweeps,
//!   listeners shared by many users.
//!
//! Data flow: an end calls [`datastream::open_and_relay`], which opens a QUIC stream, writes a
//! [`wire::OpenStream`] and pipelines its user's bytes; the other end's
//! [`datastream::read_header`] reads the header, dials (usually with [`dial::dial`]) and
//! [`datastream::complete`] answers with a [`wire::OpenResult`]; then both run [`relay::relay`].
#![forbid(unsafe_code)]

pub mod accept;
pub mod cli;
pub mod control;
pub mod datastream;
pub mod dial;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod shutdown;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod udp;
pub mod wire;
pub mod wsbridge;
