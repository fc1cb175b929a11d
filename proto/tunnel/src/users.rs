//! Who a user is, for limits, and the per-user connection cap of public listeners (nginx's
//! `limit_conn`).
//!
//! A user is the address prefix one host (or one NAT) controls: counting by exact address
//! would let an IPv6 host rotate through its /64 and count as billions of users.
//! [`UserLimit`] caps the connections one user has open at once, over every listener that
//! shares it; a connection takes a [`UserPermit`] as it is accepted (one hash lookup) and gives
//! it back when it ends. The table holds only users with a connection open, so it is bounded by
//! the open connections themselves.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The prefix of `ip` one host controls: the address for IPv4 (and IPv4-mapped IPv6), the /64
/// for IPv6.
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// `addr` as a user is shown and counted: an IPv4 user of a dual-stack (`[::]`) socket arrives
/// as `::ffff:a.b.c.d`, and is `a.b.c.d` in logs, limits, headers and status, as on an IPv4
/// socket. (Replies still go to the address as received.)
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Connections open per user, capped at `max`.
pub struct UserLimit {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Called for each connection refused over the cap (a metrics counter).
    on_refused: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for UserLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserLimit").field("max", &self.max).finish_non_exhaustive()
    }
}

/// One open connection of a user; dropping it gives the place back.
#[derive(Debug)]
pub struct UserPermit {
    limit: Arc<UserLimit>,
    user: IpAddr,
}

impl UserLimit {
    /// At most `max` connections per user; `on_refused` is called for each one refused.
    pub fn new(max: u32, on_refused: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { max, open: Mutex::default(), on_refused: Box::new(on_refused) })
    }

    /// No cap (listeners that only local users reach).
    pub fn unlimited() -> Arc<Self> {
        Self::new(u32::MAX, || {})
    }

    /// A place for a connection from `peer`, unless its user has `max` open.
    pub fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Option<UserPermit> {
        let user = prefix(peer);
        let mut open = self.lock();
        let count = open.entry(user).or_default();
        if *count >= self.max {
            drop(open);
            (self.on_refused)();
            return None;
        }
        *count += 1;
        Some(UserPermit { limit: self.clone(), user })
    }

    /// Connections `peer`'s user has open now.
    pub fn open(&self, peer: IpAddr) -> u32 {
        self.lock().get(&prefix(peer)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Single increments and decrements: a poisoned lock still holds a consistent map.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        let mut open = self.limit.lock();
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_user_has_at_most_max_and_a_place_comes_back_when_a_connection_ends() {
        let limit = UserLimit::new(2, || {});
        let (a, b) = (limit.try_acquire(ip("2001:db8::1")), limit.try_acquire(ip("2001:db8::2")));
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire(ip("2001:db8::ffff")).is_none(), "the same /64 is one user");
        assert!(limit.try_acquire(ip("2001:db8:0:1::1")).is_some(), "another /64 is another user");
        drop(a);
        let c = limit.try_acquire(ip("2001:db8::3"));
        assert!(c.is_some());
        drop(b);
        assert_eq!(limit.open(ip("2001:db8::1")), 1);
        drop(c);
        assert_eq!(limit.open(ip("2001:db8::1")), 0);
    }

    #[test]
    fn ipv4_is_itself_and_ipv6_is_its_slash_64() {
        assert_eq!(prefix(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(prefix(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(prefix(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(prefix(ip("2001:db8:1:2::1")), prefix(ip("2001:db8:1:3::1")));
    }
}
