//! What the wmproxy server and client share.
//!
//! # Layout
//! - [`wire`]: the protocol, sans-IO. Message types, length-prefixed framing (decoders that
//!   never panic and cap every length) and the auth proof. No sockets, no runtime.
//! - [`stream`]: reads and writes [`wire`] frames on async streams (quinn's send/receive halves),
//!   reading exactly one frame and never past it.
//! - [`tls`]: certificate fingerprints and the pinned-fingerprint verifier.
//! - [`transport`]: the tuned quinn `TransportConfig` and UDP socket setup both ends use.
//! - [`relay`]: copies bytes between a TCP socket and a QUIC stream, both ways, honouring
//!   half-close and allocating buffers only while data flows.
//!
//! Data flow: an end opens a QUIC stream, writes a [`wire::OpenStream`] frame with
//! [`stream::write_frame`], the other end answers with [`wire::OpenResult`], then both hand
//! the stream to [`relay::relay`].
#![forbid(unsafe_code)]

pub mod relay;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod wire;
