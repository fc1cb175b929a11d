//! A per-service bandwidth limit (frp's `bandwidthLimit`): a token bucket of bytes shared by
//! every connection and flow of the service on this end, refilled at the limit and holding one
//! second of it. Each end limits what it sends into the tunnel: the client the service's
//! replies, the server the users' bytes.
//!
//! TCP waits ([`Bandwidth::charge`] says how long): the relay stops reading until the bytes it
//! read may pass, so TCP's own flow control slows the sender and nothing is lost. UDP polices
//! ([`Bandwidth::try_take`]): a packet over the limit is dropped and counted, as a router
//! would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use wmproxy_wire::udp::MAX_PACKET_LEN;

#[derive(Debug)]
struct Bucket {
    /// Bytes that may pass now; negative while a TCP sender is paying back a large read.
    tokens: f64,
    at: Instant,
}

/// One service's limit on this end.
#[derive(Debug)]
pub struct Bandwidth {
    /// Bytes per second.
    rate: f64,
    /// The bucket's size: a second of the rate, and at least one largest UDP packet.
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl Bandwidth {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        // u64 → f64 loses precision only above 2^53 bytes/s, far above any link.
        let rate = bytes_per_sec.max(1) as f64;
        let burst = rate.max(MAX_PACKET_LEN as f64);
        Arc::new(Self { rate, burst, bucket: Mutex::new(Bucket { tokens: burst, at: Instant::now() }) })
    }

    /// Counts `n` bytes sent; how long the sender should wait before it sends more, if the
    /// bucket is in debt. No timer and no await while the sender stays within the limit.
    pub fn charge(&self, n: usize) -> Option<Duration> {
        let mut bucket = self.refilled();
        bucket.tokens -= n as f64;
        (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / self.rate))
    }

    /// Takes `n` bytes if the bucket holds them now (a UDP packet); otherwise takes nothing.
    pub fn try_take(&self, n: usize) -> bool {
        let mut bucket = self.refilled();
        let n = n as f64;
        if bucket.tokens < n {
            return false;
        }
        bucket.tokens -= n;
        true
    }

    /// The bucket, refilled up to now.
    fn refilled(&self) -> std::sync::MutexGuard<'_, Bucket> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tcp_waits_to_the_rate_and_udp_drops_over_it() {
        let limit = Bandwidth::new(100_000);
        let start = Instant::now();
        // The first second's worth passes at once; each further 100 kB costs a second.
        assert_eq!(limit.charge(100_000), None);
        let wait = limit.charge(300_000).unwrap_or_default();
        assert_eq!(wait, Duration::from_secs(3));
        tokio::time::sleep(wait).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // UDP: nothing left now, so a packet is dropped; half a second later 50 kB pass.
        assert!(!limit.try_take(1_000));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limit.try_take(50_000));
        assert!(!limit.try_take(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_limit_still_passes_a_largest_packet() {
        let limit = Bandwidth::new(1_000);
        assert!(limit.try_take(MAX_PACKET_LEN));
    }
}
