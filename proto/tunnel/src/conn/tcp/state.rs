//! What every part of one TCP-transport connection shares: whether it has ended and why, and
//! the last round-trip time its keepalive measured.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::ConnectionError;
use tokio_util::sync::CancellationToken;

/// The shared state of one connection.
#[derive(Debug, Default)]
pub(super) struct State {
    reason: OnceLock<ConnectionError>,
    /// Users' signal: the connection is closed (or closing: its close frame may still be on
    /// its way out).
    ended: CancellationToken,
    /// The tasks' signal: drop the connection.
    stop: CancellationToken,
    rtt_us: AtomicU64,
}

impl State {
    /// Ends the connection with `reason`, unless it has ended already (the first reason stays).
    pub fn end(&self, reason: ConnectionError) {
        self.closing(reason);
        self.stop.cancel();
    }

    /// Records `reason` and tells users, but leaves the connection up so that a close frame
    /// can still go out; [`Self::stop`] drops it.
    pub fn closing(&self, reason: ConnectionError) {
        let _ = self.reason.set(reason);
        self.ended.cancel();
    }

    /// Drops the connection: every task of it ends.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Completes when the connection's tasks are to end.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Why it ended, or `None` while it is up.
    pub fn reason(&self) -> Option<ConnectionError> {
        self.reason.get().cloned()
    }

    /// Why it ended, for a stream that found it gone (a reset when nobody said why).
    pub fn lost(&self) -> ConnectionError {
        self.reason().unwrap_or(ConnectionError::Reset)
    }

    /// Completes when the connection ends.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    pub fn set_rtt(&self, rtt: Duration) {
        self.rtt_us.store(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }
}
