//! The runtime both wmproxy ends share: everything between a tunnel's connection and a user's
//! socket. The wire format itself is [`wmproxy_wire`] (sans-IO); this crate puts it on tokio and
//! quinn.
//!
//! # Layout
//! - [`conn`]: [`conn::Conn`], a tunnel's connection and its streams whichever transport
//!   carries them: QUIC, or the TCP transport ([`conn::tcp`]: TLS over TCP, HTTP/2 streams);
//!   nothing above it names the transport.
//! - [`tunnel`]: [`Tunnel`], the handle to one live tunnel (its connection, permits for the
//!   streams and UDP flows this end opens, its flow table), shared by everything that sends
//!   through it.
//! - [`upstream`]: [`Upstream`], what every listener holds to reach a service or a target
//!   (`open` a data stream, route a UDP `flow`), and its typed [`OpenError`].
//! - [`stream`]: reads and writes [`wmproxy_wire`] frames on async streams (quinn's halves),
//!   reading exactly one frame and never past it.
//! - [`datastream`]: the life of a data stream on both ends (open, header, answer, relay).
//! - [`relay`]: copies bytes between a TCP socket and a QUIC stream, both ways, honouring
//!   half-close and allocating buffers only while data flows. [`splice`]: the same between
//!   two streams (the server relaying a visitor to a private service).
//! - [`udp`]: UDP flows: QUIC datagrams tagged with a flow id, flow tables with idle sweeps,
//!   listeners shared by many users.
//! - [`dial`]: connects to a [`wmproxy_wire::Target`] under an egress check and maps failures
//!   to [`wmproxy_wire::OpenResult`].
//! - [`listener`]: what a proxy or forward listener carried ([`listener::ListenerStats`]:
//!   connections, bytes as they pass, refusals by cause), and its access log line.
//! - [`probe`]: asks a peer whether it is there (`OpenStream::Ping`), and answers.
//! - [`accept`]: the accept step of every TCP listener (stop token, error backoff, the
//!   per-user connection cap of [`users`]).
//! - [`transport`]: the tuned quinn `TransportConfig` and UDP socket setup; [`congestion`]:
//!   wmproxy's BBR-style congestion controller, one of the choices it offers.
//! - [`tls`]: certificate fingerprints and the pinned-fingerprint verifier.
//! - [`side`]: [`Side`], whose fault an error is (user, backend, tunnel, internal).
//!
//! Data flow of one TCP connection: a listener accepts it and asks its [`Upstream`] for a
//! stream; the upstream picks a [`Tunnel`] and calls [`datastream::open_and_relay`] (or
//! [`datastream::open_confirmed`]), which opens a QUIC stream, writes a
//! [`wmproxy_wire::OpenStream`] and pipelines the user's bytes; the other end's
//! [`datastream::read_header`] reads the header, [`dial::dial`]s, and [`datastream::complete`]
//! answers with a [`wmproxy_wire::OpenResult`]; then both run [`relay::relay`].
#![forbid(unsafe_code)]

pub mod accept;
pub mod bandwidth;
pub mod congestion;
pub mod conn;
pub mod datastream;
pub mod dial;
pub mod listener;
pub mod probe;
pub mod relay;
pub mod side;
pub mod splice;
pub mod stream;
pub mod tls;
pub mod transport;
pub mod tunnel;
pub mod udp;
pub mod upstream;
pub mod users;

pub use conn::{Conn, RecvStream, SendStream};
pub use side::Side;
pub use tunnel::Tunnel;
pub use upstream::{Ask, OpenError, Opened, Upstream};
