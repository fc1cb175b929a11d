//! [`UdpBudget`]: the UDP flows of all clients together, and the counters every flow table of
//! the server reports to. Each client's own limit is its tunnel's
//! ([`wmproxy_tunnel::Tunnel::flow_permit`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wmproxy_tunnel::udp::UdpStats;

/// The server-wide UDP flow limit and counters.
#[derive(Debug, Clone)]
pub(crate) struct UdpBudget {
    flows: Arc<Semaphore>,
    /// Counters of every client's UDP flows.
    pub stats: Arc<UdpStats>,
}

impl UdpBudget {
    /// A budget of `max_flows` flows at once.
    pub fn new(max_flows: u32) -> Self {
        Self { flows: Arc::new(Semaphore::new(max_flows as usize)), stats: Arc::default() }
    }

    /// A permit for one more flow, or `None` at the limit.
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.flows.clone().try_acquire_owned().ok()
    }
}
