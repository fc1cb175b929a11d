//! [`Upstream`]: what every listener holds to reach whatever serves it. On the server a public
//! port holds one service's upstream, a group port holds its group, a vhost or SNI route holds
//! either, and a proxy holds the client (or group) it leaves from; on the client the forwards
//! and proxies hold the current tunnel. Each asks it to [`open`](Upstream::open) a data stream
//! for a connection, or to route a UDP [`flow`](Upstream::flow), and gets an [`OpenError`]
//! that says why not.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::conn::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use wmproxy_wire::{OpenResult, OpenStream, Target};

use crate::datastream::DataStreamError;
use crate::{Side, Tunnel};

/// What a connection asks the far end for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The service the upstream stands for (`Expose`, `UdpExpose`).
    Service,
    /// A `host:port` the far end dials under its egress policy (`Connect`, `UdpConnect` from a
    /// client; `ProxyConnect`, `ProxyUdpConnect` from the server).
    Target(Target),
}

impl Ask {
    /// The target asked for, for an upstream that carries targets only (a client's tunnel, a
    /// proxy's `via`): asking it for a service is refused as an unknown service.
    pub fn target(self) -> Result<Target, OpenError> {
        match self {
            Self::Target(target) => Ok(target),
            Self::Service => Err(OpenError::Refused(OpenResult::UnknownService)),
        }
    }
}

/// What a connection holds until it ends: stream or flow permits, active-connection counts.
pub type Hold = Vec<Box<dyn Send>>;

/// A data stream the far end has answered `Ok`, and what it holds while it lives.
pub struct Opened<B> {
    /// Towards the far end.
    pub send: SendStream,
    /// From the far end.
    pub recv: RecvStream,
    /// Who took the connection (the server names the client and service).
    pub by: B,
    /// Released when the connection ends.
    pub hold: Hold,
}

impl<B: fmt::Debug> fmt::Debug for Opened<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened").field("stream", &self.send.id()).field("by", &self.by).finish_non_exhaustive()
    }
}

/// Where a new UDP flow goes: the tunnel it rides, the header that opens it, and what it holds.
pub struct FlowRoute {
    /// The tunnel.
    pub tunnel: Arc<Tunnel>,
    /// The header of the flow's stream.
    pub header: OpenStream,
    /// Also ends the flow when cancelled (its backend stopped being healthy).
    pub ends_with: Option<CancellationToken>,
    /// Released when the flow ends.
    pub hold: Hold,
    /// The service's bandwidth on this end, if it has a limit.
    pub limit: Option<Arc<crate::bandwidth::Bandwidth>>,
}

impl fmt::Debug for FlowRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowRoute").field("header", &self.header).finish_non_exhaustive()
    }
}

/// Why no data stream (or flow) was opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// There is no live tunnel to the far end (the client is not connected, or reconnecting).
    #[error("no tunnel to the far end right now")]
    TunnelGone,
    /// A group none of whose backends is eligible (all unhealthy, drained, or none joined).
    #[error("no eligible backend")]
    NoneEligible,
    /// Every backend tried failed.
    #[error("every backend tried failed ({tried} tried); the last: {last}")]
    AllFailed {
        /// How many were tried.
        tried: usize,
        /// The last one's failure.
        #[source]
        last: DataStreamError,
    },
    /// The far end answered with a refusal (it could not or would not reach the service).
    #[error("{0}")]
    Refused(OpenResult),
    /// This end's limit of streams or flows towards that far end is reached.
    #[error("too many connections to that client at once")]
    Busy,
    /// The tunnel failed while the stream was being opened (lost, timed out, garbled).
    #[error(transparent)]
    Failed(DataStreamError),
}

impl OpenError {
    /// Whose fault it is.
    pub fn side(&self) -> Side {
        match self {
            Self::TunnelGone => Side::Tunnel,
            Self::NoneEligible | Self::AllFailed { .. } => Side::Backend,
            Self::Refused(result) => Side::of_refusal(*result),
            Self::Busy => Side::Internal,
            Self::Failed(e) => e.side(),
        }
    }
}

impl From<DataStreamError> for OpenError {
    fn from(e: DataStreamError) -> Self {
        match e {
            DataStreamError::Refused(result) => Self::Refused(result),
            other => Self::Failed(other),
        }
    }
}

/// Reaches whatever serves a listener: one service, a group's backends, the current tunnel.
pub trait Upstream: Send + Sync + 'static {
    /// Who takes a connection (the server names the client and service; the client, nobody).
    type By: Send + 'static;

    /// Opens a data stream for a connection of `peer` asking for `ask`, and waits for the far
    /// end's answer; no payload is sent first, so a caller may still try elsewhere.
    fn open(&self, peer: SocketAddr, ask: Ask) -> impl Future<Output = Result<Opened<Self::By>, OpenError>> + Send;

    /// Where a new UDP flow of `peer` asking for `ask` goes, with the permits it holds.
    fn flow(&self, peer: SocketAddr, ask: Ask) -> Result<FlowRoute, OpenError>;
}
