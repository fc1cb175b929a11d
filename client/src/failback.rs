//! `mode = "failover"` on a server other than the first: the earlier servers of the list are
//! asked every so often (one handshake each, closed at once), and once one has answered every
//! time for `limits.failback_after_secs`, the tunnel moves back to it. The hold keeps a
//! server that comes and goes from pulling the tunnel back and forth.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};
use wmproxy_config::{ClientConfig, Transport};

use crate::handshake::Dialer;
use crate::quic_probe::answers;

/// The earlier servers, and how they are asked.
#[derive(Debug, Clone)]
pub(crate) struct Failback {
    /// Every server of the list, in order.
    pub dialers: Arc<Vec<Dialer>>,
    pub config: Arc<ClientConfig>,
    /// The transport probes use.
    pub transport: Transport,
    /// How long a server must keep answering.
    pub hold: Duration,
}

impl Failback {
    /// Time between probes: a quarter of the hold, within 250 ms and 10 s.
    fn interval(&self) -> Duration {
        (self.hold / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Completes with the first of the servers `earlier` (indexes into the list, in order:
    /// those before the one the tunnel is on, less those that refused the client for good)
    /// that has answered every probe for the hold; never, if there are none.
    pub async fn due(&self, earlier: &[usize]) -> usize {
        let earlier: Vec<(usize, &Dialer)> =
            earlier.iter().filter_map(|&i| self.dialers.get(i).map(|d| (i, d))).collect();
        if earlier.is_empty() {
            return std::future::pending().await;
        }
        let mut since: Vec<Option<Instant>> = vec![None; earlier.len()];
        loop {
            tokio::time::sleep(self.interval()).await;
            for (slot, (i, dialer)) in earlier.iter().enumerate() {
                match answers(dialer, self.transport, &self.config).await {
                    Ok(()) => {
                        let first = *since[slot].get_or_insert_with(Instant::now);
                        if first.elapsed() >= self.hold {
                            info!(server = %dialer.server.addr, "an earlier server has answered for the hold: moving back to it");
                            return *i;
                        }
                    }
                    Err(why) => {
                        debug!(server = %dialer.server.addr, %why, "an earlier server does not answer yet");
                        since[slot] = None;
                    }
                }
            }
        }
    }
}
