//! Throttles failed logins per (source prefix, client name), in a table of bounded size.
//!
//! The key is the address prefix a single host (or NAT) controls, /32 for IPv4 and /64 for
//! IPv6 (an IPv6 host rotates freely within its /64), together with the name it tries: one host
//! guessing one client's token does not throttle another client behind the same NAT, nor the
//! same client from elsewhere. The server checks the proof first, and a correct proof is never
//! refused for failures: only a wrong one is answered `Throttled` once its key has failed too
//! often (see `auth`).
//!
//! Sans-IO: every call takes `now`, so tests drive time by hand.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use wmproxy_wire::Name;

use wmproxy_tunnel::users::prefix;

/// Failures allowed per key within [`WINDOW`]; further wrong proofs are answered `Throttled`.
pub const MAX_FAILURES: u32 = 5;
/// How long failures are remembered, and how long a throttled key waits.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at once. When full, expired entries go first, then the keys not (yet)
/// throttled, oldest first; a throttled key is evicted only when nothing else is left.
pub const MAX_TRACKED: usize = 4096;

/// What failures are counted by: the source's prefix and the client name it tried.
pub type Key = (IpAddr, Name);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    first_failure: Instant,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.first_failure) >= WINDOW
    }
}

/// Failed logins per key.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    entries: HashMap<Key, Entry>,
}

impl AuthThrottle {
    /// Counts one wrong proof for `name` from `ip`. `Err(wait)` when the key had already failed
    /// [`MAX_FAILURES`] times within the window: this attempt is answered `Throttled`, to retry
    /// after `wait`.
    pub fn record_failure(&mut self, ip: IpAddr, name: &Name, now: Instant) -> Result<(), Duration> {
        let key = (prefix(ip), name.clone());
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED {
            self.evict(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry { failures: 0, first_failure: now });
        if entry.expired(now) {
            *entry = Entry { failures: 0, first_failure: now };
        }
        let throttled = entry.failures >= MAX_FAILURES;
        entry.failures = entry.failures.saturating_add(1);
        if throttled { Err(WINDOW.saturating_sub(now.saturating_duration_since(entry.first_failure))) } else { Ok(()) }
    }

    /// Forgets the failures of `name` from `ip` once it proved itself.
    pub fn record_success(&mut self, ip: IpAddr, name: &Name) {
        self.entries.remove(&(prefix(ip), name.clone()));
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, e| !e.expired(now));
        if self.entries.len() < MAX_TRACKED {
            return;
        }
        // The oldest key that is not throttled; only if every key is throttled, the oldest.
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| (e.failures >= MAX_FAILURES, e.first_failure))
            .map(|(key, _)| key.clone());
        if let Some(key) = victim {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_key_is_throttled_after_max_failures_until_the_window_passes() {
        let mut t = AuthThrottle::default();
        let (ip, home) = (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), name("home"));
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(t.record_failure(ip, &home, start).is_ok());
        }
        let later = start + Duration::from_secs(10);
        assert_eq!(t.record_failure(ip, &home, later), Err(WINDOW - Duration::from_secs(10)));
        // Another name from the same host, and the same name from another host, are untouched.
        assert!(t.record_failure(ip, &name("office"), later).is_ok());
        assert!(t.record_failure(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), &home, later).is_ok());
        assert!(t.record_failure(ip, &home, start + WINDOW).is_ok(), "a new window");
    }

    #[test]
    fn an_ipv6_host_cannot_rotate_out_of_its_slash_64() {
        let mut t = AuthThrottle::default();
        let home = name("home");
        let now = Instant::now();
        for i in 1..=MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(t.record_failure(ip, &home, now).is_ok());
        }
        let next: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(t.record_failure(next, &home, now).is_err(), "the same /64");
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(t.record_failure(other, &home, now).is_ok(), "another /64");
    }

    #[test]
    fn success_forgets_failures() {
        let mut t = AuthThrottle::default();
        let (ip, home) = (IpAddr::V4(Ipv4Addr::LOCALHOST), name("home"));
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            let _ = t.record_failure(ip, &home, now);
        }
        t.record_success(ip, &home);
        assert!(t.record_failure(ip, &home, now).is_ok());
    }

    #[test]
    fn a_full_table_keeps_its_throttled_keys() {
        let mut t = AuthThrottle::default();
        let now = Instant::now();
        let (attacker, home) = (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), name("home"));
        for _ in 0..MAX_FAILURES {
            let _ = t.record_failure(attacker, &home, now);
        }
        // The attacker's throttled key is the oldest; a flood of fresh keys must not push it out.
        for i in 0..(MAX_TRACKED as u32 + 100) {
            let _ = t.record_failure(
                IpAddr::V4(Ipv4Addr::from(i)),
                &home,
                now + Duration::from_millis(u64::from(i % 1000)),
            );
        }
        assert_eq!(t.len(), MAX_TRACKED);
        assert!(t.record_failure(attacker, &home, now + Duration::from_secs(2)).is_err(), "still throttled");
    }
}
