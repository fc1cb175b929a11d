//! UDP flows over a tunnel: the IO side of [`wmproxy_wire::udp`] (read it first for the
//! layout), shared by both ends.
//!
//! # Pieces
//! - [`table`]: [`Flow`], the state the tasks of one flow share, and [`FlowTable`], a tunnel's
//!   flows by id. [`FlowTable::run`] is the tunnel's datagram reader: it hands each datagram to
//!   its flow's socket without waiting, and sweeps flows idle past the timeout.
//! - [`listener`]: a UDP port shared by many users (a public port, a UDP forward); a new user
//!   address opens a flow on the route its [`crate::Upstream::flow`] gives.
//! - [`flow`]: the task of one flow on either end ([`flow::open`], [`flow::accept`]).
//! - [`socket`]: receiving on a flow's own socket without a 64 KiB buffer per flow. (Its
//!   socket is connected to the target by [`crate::dial::dial_udp`].)
//! - [`stats`]: counters, including every reason a packet is dropped.
//!
//! # Bounds
//! Flows per client and in total are capped by permits: a route's [`crate::upstream::FlowRoute`]
//! holds them (see [`crate::Tunnel::flow_permit`]), and the acceptor checks its own. Packets are never queued
//! without bound: datagrams go straight to a socket (`try_send`, dropped if its buffer is
//! full), and the stream path has a per-flow packet limit and a per-tunnel byte budget
//! ([`table::STREAM_QUEUE_BYTES`]). quinn bounds its own datagram buffers (see
//! [`crate::transport`]).

pub mod flow;
pub mod listener;
pub mod socket;
pub mod stats;
pub mod table;

pub use stats::{UdpSnapshot, UdpStats};
pub use table::{Flow, FlowTable, Sink};
