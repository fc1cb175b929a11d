//! The wmproxy wire protocol, sans-IO (in the manner of `quinn-proto`): message types, framing,
//! the auth proof and the judgement of a Hello.
//!
//! Nothing here touches a socket, a clock or an async runtime, and nothing here panics on
//! input: every decoder returns an error (or "need more bytes"), and every length is capped
//! before anything is allocated. The IO side (`wmproxy_tunnel::stream`) reads a 4-byte header,
//! asks [`frame::body_len`] whether the length is acceptable, reads exactly that many bytes and
//! hands them to [`frame::decode_body`].
//!
//! # Layout
//! - [`message`]: every message, with the channel it may travel on and its byte layout.
//! - [`frame`]: the length prefix and the bincode body; [`frame::decode`] and
//!   [`frame::encode`] (and their whole-body forms) are the ways in and out.
//! - [`name`]: [`Name`] and [`Target`], validated while decoding: code that receives a message
//!   never checks a name or a `host:port` again.
//! - [`hello`]: the server's judgement of a Hello (version, then the message), as pure
//!   functions.
//! - [`routes`]: the shape of an HTTP service's host names and locations, and how many a
//!   service and a client may claim.
//! - [`auth`]: the proof bound to the TLS session, and constant-time secret comparison.
//! - [`private`]: who may visit a private service, and the verifier a visitor shows.
//! - [`link`]: the link stream of the TCP transport (datagrams and the close code, which
//!   TCP has no frames for).
//! - [`udp`]: the QUIC datagram layout of UDP flows and the packet framing of flow streams.
//!
//! Data flow: bytes → [`frame::body_len`] → [`frame::decode_body`] (names and targets checked
//! by their `Deserialize`) → a typed message; a typed message → [`frame::encode`] → bytes.
//!
//! # Channels
//! A tunnel is one QUIC connection with ALPN [`ALPN`].
//!
//! | channel | opened by | frames, in order |
//! |---|---|---|
//! | control stream (first bidi stream) | client | client: [`Hello`], then [`ControlRequest`]s (a `Register`, then `Health` reports of grouped services); server: [`HelloReply`], then one [`ControlReply`] per `Register` (reports are not answered), and a `Withdrawn` when a reload takes services back |
//! | data stream (every later bidi stream) | either end | opener: one [`OpenStream`], then raw bytes (pipelined, without waiting for the answer); acceptor: one [`OpenResult`], then raw bytes. The acceptor reads no payload before it has answered; after a non-`Ok` answer it discards it |
//! | flow stream (a data stream opened with `UdpExpose`/`UdpConnect`) | either end | as a data stream, but after the header and answer each side sends length-prefixed packets ([`udp`]) instead of raw bytes |
//! | QUIC datagrams | either end | `varint flow id` then one UDP payload ([`udp`]) |
//!
//! Over the TCP transport (TLS 1.3 on TCP, ALPN [`ALPN_TCP`], HTTP/2 streams; see
//! `wmproxy_tunnel::conn::tcp`) the channels are the same streams, and datagrams ride the
//! [`link`] stream.
//!
//! # Frame layout
//! ```text
//! +----------------------+---------------------------------------+
//! | len: u32 big-endian  | body: `len` bytes of bincode 2         |
//! +----------------------+---------------------------------------+
//! ```
//! `len` is at most [`MAX_FRAME_LEN`]. The body uses bincode's standard configuration:
//! integers (other than `u8`) are varints (`< 251`: one byte; `251`: `u16` follows; `252`:
//! `u32`; `253`: `u64`, little-endian), strings and sequences are a varint length then the
//! items, enums are a varint variant index then the fields, and `Option` is a `0`/`1` byte
//! then the value. A body must be consumed exactly: trailing bytes are an error.
//!
//! # Compatibility
//! The first field of [`Hello`] is the protocol version, and variant 0 and 1 of
//! [`HelloReply`] are `Welcome` and `Reject`; these never change, so two versions can always
//! tell each other which versions they speak (see [`frame::peek_protocol_version`]).

#![forbid(unsafe_code)]

pub mod auth;
pub mod frame;
pub mod hello;
pub mod link;
pub mod message;
pub mod name;
pub mod private;
pub mod routes;
pub mod udp;

pub use auth::{AuthToken, Proof, ResumeSecret};
pub use frame::{FrameError, WireMessage};
pub use message::*;
pub use name::{Name, NameError, Target};
pub use private::{Candidates, PeerInfo, PrivateSpec, Verifier};

/// ALPN protocol id: the protocol family. It stays `wmproxy/1` across versions, so that two
/// versions still meet and the Hello tells them apart with a clear `VersionMismatch` rather
/// than a TLS failure.
pub const ALPN: &[u8] = b"wmproxy/1";

/// ALPN protocol id of a direct connection between two clients (see [`private`]).
pub const ALPN_DIRECT: &[u8] = b"wmproxy-direct/1";

/// ALPN protocol id of the TCP transport (TLS 1.3 on TCP, HTTP/2 streams inside): a QUIC
/// client and a TCP client never take each other's listener for theirs.
pub const ALPN_TCP: &[u8] = b"wmproxy-tcp/1";

/// The protocol version this build speaks. Both ends must speak the same one.
///
/// Version 2: the resume secret (`Hello::resume`, `HelloReply::Welcome::resume`), the
/// `NameInUse` and `SharedTokenFull` rejections, `OpenStream::Ping` and
/// `RegisterOutcome::HostTaken`.
///
/// Version 4: `HelloReply::Welcome::limits`.
///
/// Version 5: `Hello::servers`.
///
/// Version 6: private services (`ServiceSpec::private`, `RegisterOutcome::Private`,
/// `OpenStream::Visit`, `OpenResult::Offline` and `Forbidden`) and direct connections
/// between clients (`OpenStream::Rendezvous` and `Punch`, `private::PeerInfo`), and private UDP
/// services (`OpenStream::UdpVisit`).
pub const PROTOCOL_VERSION: u32 = 6;

/// Largest accepted frame body, in bytes. Larger lengths are rejected before any allocation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Size of the length prefix in front of every frame body.
pub const FRAME_HEADER_LEN: usize = 4;

/// Longest service or client name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest `host:port` target of a [`OpenStream::Connect`], in bytes.
pub const MAX_TARGET_LEN: usize = 261;

/// Most services one client may register in one [`ControlRequest::Register`].
pub const MAX_SERVICES: usize = 256;

/// Application error codes carried by QUIC `CONNECTION_CLOSE`, stream `RESET_STREAM` and
/// `STOP_SENDING` frames. The close reason text says more, for humans.
pub mod close_code {
    /// Orderly close: shutdown or the end of a client.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol (malformed frame, unexpected message, timeout on a header).
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The server refused the Hello (see the `Reject` frame sent before).
    pub const REJECTED: u32 = 2;
    /// A newer connection of the same client replaced this one.
    pub const REPLACED: u32 = 3;
    /// The server is under load and closed a connection that had not authenticated yet, to
    /// make room for a newer one. Retrying is right.
    pub const BUSY: u32 = 4;
}
