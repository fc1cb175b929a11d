//! The vhost's per-user request rate (nginx's `limit_req`): a token bucket per user (an
//! address; its /64 for IPv6) that holds `burst` requests and refills at the configured rate.
//! A request that finds its bucket empty is answered `429` with the seconds until a token is
//! there (`Retry-After`).
//!
//! The table is bounded: a full bucket is the same as no bucket, so buckets that have refilled
//! are dropped when the table reaches [`MAX_USERS`]; if every bucket is still in use then, a
//! new user is let through untracked (a flood from that many addresses is beyond what a
//! per-user limit can stop) and the event is logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;
use wmproxy_tunnel::users::prefix;

/// Users tracked at once (about 40 bytes each).
pub(crate) const MAX_USERS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Requests per user: `burst` at once, then `per_minute` on average.
#[derive(Debug)]
pub(crate) struct RequestRate {
    /// Tokens per second; `0`: no limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RequestRate {
    /// `per_minute` requests per user on average (`0`: no limit), `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self { rate: f64::from(per_minute) / 60.0, burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// Takes a token for a request from `peer` at `now`; or, if its user has none left, how
    /// long until one is there.
    pub fn take(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let user = prefix(peer);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_USERS && !buckets.contains_key(&user) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            if buckets.len() >= MAX_USERS {
                warn!(users = buckets.len(), "request-rate table full; a new user goes untracked");
                return Ok(());
            }
        }
        let bucket = buckets.entry(user).or_insert(Bucket { tokens: self.burst, at: now });
        bucket.tokens = self.refilled(*bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
    }

    /// `bucket`'s tokens at `now`.
    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_user_gets_its_burst_then_the_rate_and_others_are_not_affected() {
        let rate = RequestRate::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rate.take(ip("192.0.2.1"), t0), Ok(()));
        }
        assert_eq!(rate.take(ip("192.0.2.1"), t0), Err(Duration::from_secs(1)));
        assert_eq!(rate.take(ip("192.0.2.2"), t0), Ok(()), "another user has a bucket of its own");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(rate.take(ip("192.0.2.1"), later), Ok(()), "one token back after a second");
        assert!(rate.take(ip("192.0.2.1"), later).is_err());
        // An IPv6 user is its /64.
        for _ in 0..3 {
            assert_eq!(rate.take(ip("2001:db8::1"), t0), Ok(()));
        }
        assert!(rate.take(ip("2001:db8::2"), t0).is_err());
    }

    #[test]
    fn off_means_off_and_the_table_drops_refilled_buckets_first() {
        let off = RequestRate::new(0, 1);
        assert!((0..10).all(|_| off.take(ip("192.0.2.1"), Instant::now()).is_ok()));

        let rate = RequestRate::new(60, 1);
        let t0 = Instant::now();
        for i in 0..MAX_USERS as u32 {
            let _ = rate.take(IpAddr::from(i.to_be_bytes()), t0);
        }
        // Every bucket is empty: a new user goes untracked, and the table does not grow.
        assert_eq!(rate.take(ip("198.18.0.1"), t0), Ok(()));
        assert_eq!(rate.buckets.lock().map(|b| b.len()).unwrap_or(0), MAX_USERS);
        // A second later every bucket has refilled: they make room.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(rate.take(ip("198.18.0.1"), later), Ok(()));
        assert_eq!(rate.buckets.lock().map(|b| b.len()).unwrap_or(0), 1);
    }
}
