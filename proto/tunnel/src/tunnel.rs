//! [`Tunnel`]: the handle to one live tunnel. Everything that sends through a tunnel (a
//! public port, a group backend, a vhost route, a proxy, a forward, a UDP flow) holds the same
//! `Arc<Tunnel>` instead of copies of its parts, so the limits it carries are the tunnel's own.

use std::sync::Arc;
use std::time::Duration;

use crate::conn::{Conn, RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wmproxy_wire::OpenStream;

use crate::datastream::{self, DataStreamError};
use crate::relay::RelayStats;
use crate::udp::FlowTable;
use crate::upstream::{OpenError, Opened};

/// One live tunnel and what bounds it.
#[derive(Debug)]
pub struct Tunnel {
    conn: Conn,
    flows: Arc<FlowTable>,
    /// Data streams this end may have open towards the peer at once.
    streams: Arc<Semaphore>,
    /// UDP flows through this tunnel, either direction. May be shared with other tunnels (the
    /// client's limit covers every tunnel it ever has).
    udp_flows: Arc<Semaphore>,
}

impl Tunnel {
    /// The handle of `conn`, whose flows are in `flows`.
    pub fn new(conn: Conn, flows: Arc<FlowTable>, streams: Arc<Semaphore>, udp_flows: Arc<Semaphore>) -> Self {
        Self { conn, flows, streams, udp_flows }
    }

    /// The connection, on whichever transport.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// The tunnel's UDP flows by id.
    pub fn flows(&self) -> &Arc<FlowTable> {
        &self.flows
    }

    /// A permit for one more data stream towards the peer, or `None` at the limit.
    pub fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Waits until every stream permit is back (every stream this end opened has ended), or
    /// for ever if this end never opens as many as `all`.
    pub async fn streams_finished(&self, all: u32) {
        let _all = self.streams.acquire_many(all).await;
    }

    /// Data streams this end has open towards the peer now, of at most `all`.
    pub fn streams_open(&self, all: u32) -> usize {
        (all as usize).saturating_sub(self.streams.available_permits())
    }

    /// A permit for one more UDP flow, or `None` at the limit.
    pub fn flow_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.udp_flows.clone().try_acquire_owned().ok()
    }

    /// Whether the peer accepts QUIC datagrams (UDP services need them).
    pub fn carries_datagrams(&self) -> bool {
        self.conn.max_datagram_size().is_some()
    }

    /// Opens a data stream with `header` and waits (within `timeout`) for an `Ok` answer; see
    /// [`datastream::open_confirmed`].
    pub async fn open_confirmed(
        &self,
        header: &OpenStream,
        timeout: Duration,
    ) -> Result<(SendStream, RecvStream), DataStreamError> {
        datastream::open_confirmed(&self.conn, header, timeout).await
    }

    /// [`Self::open_confirmed`] under one of the tunnel's stream permits, which the returned
    /// stream holds; `by` names who took it. `Busy` at the stream limit.
    pub async fn open_held<B>(&self, header: &OpenStream, timeout: Duration, by: B) -> Result<Opened<B>, OpenError> {
        let permit = self.stream_permit().ok_or(OpenError::Busy)?;
        let (send, recv) = self.open_confirmed(header, timeout).await?;
        Ok(Opened { send, recv, by, hold: vec![Box::new(permit)] })
    }

    /// Under one of the tunnel's stream permits (`Busy` at the limit), opens a data stream
    /// with `header`, pipelines `tcp`'s bytes behind it and relays (within `limits`, counted by
    /// its meter) until both directions end; see [`datastream::open_and_relay`].
    pub async fn open_and_relay(
        &self,
        header: &OpenStream,
        tcp: TcpStream,
        (timeout, limits): (Duration, &crate::relay::Limits<'_>),
    ) -> Result<RelayStats, OpenError> {
        let _permit = self.stream_permit().ok_or(OpenError::Busy)?;
        Ok(datastream::open_and_relay(&self.conn, header, tcp, (timeout, limits)).await?)
    }

    /// Closes the connection with `code` and `reason` (the peer sees both) and ends every flow.
    pub fn close(&self, code: u32, reason: &str) {
        self.flows.close_all();
        self.conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }
}
