//! Throttles failed authentication attempts per source IP, in a table of bounded size.
//!
//! Sans-IO: every call takes `now`, so tests drive time by hand.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed per address within [`WINDOW`] before it is throttled.
pub const MAX_FAILURES: u32 = 5;
/// How long failures are remembered, and how long a throttled address waits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once. When full, expired entries go first, then the oldest.
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first_failure: Instant,
}

/// Failed attempts per source address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    entries: HashMap<IpAddr, Entry>,
}

impl AuthThrottle {
    /// `Err(wait)` when `ip` has failed too often and must wait `wait` more.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(entry) = self.entries.get(&ip).copied() else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(entry.first_failure);
        if elapsed >= WINDOW {
            self.entries.remove(&ip);
            return Ok(());
        }
        if entry.failures >= MAX_FAILURES { Err(WINDOW - elapsed) } else { Ok(()) }
    }

    /// Counts one failed attempt from `ip`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_TRACKED {
            self.evict(now);
        }
        let entry = self.entries.entry(ip).or_insert(Entry { failures: 0, first_failure: now });
        if now.saturating_duration_since(entry.first_failure) >= WINDOW {
            *entry = Entry { failures: 0, first_failure: now };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Forgets `ip`'s failures after it authenticated.
    pub fn record_success(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    /// Addresses currently tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, e| now.saturating_duration_since(e.first_failure) < WINDOW);
        if self.entries.len() >= MAX_TRACKED {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.first_failure).map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.entries.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn throttles_after_max_failures_until_the_window_passes() {
        let mut t = AuthThrottle::default();
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(t.check(ip, start).is_ok());
            t.record_failure(ip, start);
        }
        assert_eq!(t.check(ip, start + Duration::from_secs(10)), Err(WINDOW - Duration::from_secs(10)));
        assert!(t.check(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), start).is_ok(), "other addresses unaffected");
        assert!(t.check(ip, start + WINDOW).is_ok());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn success_forgets_failures() {
        let mut t = AuthThrottle::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            t.record_failure(ip, now);
        }
        t.record_success(ip);
        assert!(t.check(ip, now).is_ok());
    }

    #[test]
    fn table_stays_bounded() {
        let mut t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(i)), now + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(t.len(), MAX_TRACKED);
    }
}
