//! The budget of connections that have not authenticated yet: from their first packet until
//! their proof is checked, they are counted here and nowhere else (not in `max_clients`).
//!
//! - At most `max_unauthenticated` wait at once. When that is full, a new connection takes the
//!   place of the oldest one waiting, which is closed: a silent peer is the oldest soon, and a
//!   real client, which sends its Hello at once, is through long before it would be. To push a
//!   real client out, an attacker must complete that many TLS handshakes while the client
//!   completes one.
//! - At most `max_unauthenticated_per_address` wait from one address prefix (`address`); one
//!   more from a validated address is refused.
//! - Under load (half the budget taken) or from an address at its cap, a connection whose
//!   address is not validated gets a QUIC retry first, so spoofed sources cost no state and
//!   cannot fill another address's quota.
//!
//! The accept loop asks [`PreAuth::admit`]; the [`Slot`] it gets lives in the connection's task
//! until the proof is checked, and says when the connection was evicted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use wmproxy_tunnel::users::prefix;

/// What the accept loop does with a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve it, holding `slot` until it has authenticated. `evicted_oldest` says whether the
    /// oldest waiting connection was evicted to make room.
    Admitted {
        /// Its place in the budget.
        slot: Slot,
        /// Whether another connection was evicted for it.
        evicted_oldest: bool,
    },
    /// Send a QUIC retry: its address must be validated first.
    Retry,
    /// Refuse it: its address has its share of connections waiting already.
    AddressFull,
}

/// The connections waiting to authenticate.
#[derive(Debug)]
pub(crate) struct PreAuth {
    table: Mutex<Table>,
    limit: usize,
    per_address: usize,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    /// Waiting connections by admission order (oldest first): their prefix, and the token that
    /// evicts them.
    waiting: BTreeMap<u64, (IpAddr, CancellationToken)>,
    by_address: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, seq: u64) -> Option<CancellationToken> {
        let (key, evict) = self.waiting.remove(&seq)?;
        if let Some(count) = self.by_address.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.by_address.remove(&key);
            }
        }
        Some(evict)
    }
}

impl PreAuth {
    /// A budget of `limit` waiting connections, `per_address` of them from one prefix (each at
    /// least one).
    pub fn new(limit: u32, per_address: u32) -> Self {
        let (limit, per_address) = (limit.max(1) as usize, per_address.max(1) as usize);
        Self { table: Mutex::default(), limit, per_address }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change is made whole under the lock: a poisoned one is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides about a new connection from `ip`; `validated` says whether its address has been
    /// proven (it answered a retry).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Admission {
        let key = prefix(ip);
        let mut table = self.lock();
        let from_here = table.by_address.get(&key).copied().unwrap_or(0);
        let loaded = table.waiting.len() >= self.limit / 2 || from_here >= self.per_address;
        if loaded && !validated {
            return Admission::Retry;
        }
        if from_here >= self.per_address {
            return Admission::AddressFull;
        }
        let evicted_oldest = table.waiting.len() >= self.limit;
        if evicted_oldest {
            let oldest = table.waiting.keys().next().copied();
            if let Some(evict) = oldest.and_then(|seq| table.remove(seq)) {
                evict.cancel();
            }
        }
        table.next += 1;
        let (seq, evicted) = (table.next, CancellationToken::new());
        table.waiting.insert(seq, (key, evicted.clone()));
        *table.by_address.entry(key).or_default() += 1;
        Admission::Admitted { slot: Slot { budget: self.clone(), seq, evicted }, evicted_oldest }
    }

    /// Connections waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// One waiting connection's place in the budget; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Slot {
    budget: Arc<PreAuth>,
    seq: u64,
    evicted: CancellationToken,
}

impl Slot {
    /// Completes when a newer connection has taken this one's place.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.lock().remove(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn admitted(admission: Admission) -> Slot {
        match admission {
            Admission::Admitted { slot, .. } => slot,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn a_full_budget_evicts_its_oldest_and_an_address_has_its_share() {
        let budget = Arc::new(PreAuth::new(4, 2));
        let a1 = admitted(budget.admit(ip("10.0.0.1"), true));
        let a2 = admitted(budget.admit(ip("10.0.0.1"), true));
        assert!(matches!(budget.admit(ip("10.0.0.1"), true), Admission::AddressFull));
        let _b = admitted(budget.admit(ip("10.0.0.2"), true));
        let _c = admitted(budget.admit(ip("10.0.0.3"), true));
        assert_eq!(budget.waiting(), 4);
        let Admission::Admitted { slot: _d, evicted_oldest: true } = budget.admit(ip("10.0.0.4"), true) else {
            panic!("the fifth should evict the first");
        };
        assert!(a1.evicted.is_cancelled() && !a2.evicted.is_cancelled());
        assert_eq!(budget.waiting(), 4);
        // The evicted one's address has a place again; dropping an evicted slot changes nothing.
        drop(a1);
        assert_eq!(budget.waiting(), 4);
        let _a3 = admitted(budget.admit(ip("10.0.0.1"), true));
        assert!(a2.evicted.is_cancelled(), "the next oldest went for it");
    }

    #[test]
    fn under_load_an_unvalidated_address_is_sent_a_retry() {
        let budget = Arc::new(PreAuth::new(4, 1));
        let _a = admitted(budget.admit(ip("10.0.0.1"), false));
        assert!(matches!(budget.admit(ip("10.0.0.1"), false), Admission::Retry), "at its cap, spoofable");
        assert!(matches!(budget.admit(ip("10.0.0.1"), true), Admission::AddressFull));
        let _b = admitted(budget.admit(ip("10.0.0.2"), false));
        assert!(matches!(budget.admit(ip("10.0.0.3"), false), Admission::Retry), "half the budget taken");
        let _c = admitted(budget.admit(ip("10.0.0.3"), true));
    }

    #[test]
    fn an_ipv6_host_counts_once_for_its_slash_64() {
        let budget = Arc::new(PreAuth::new(100, 2));
        let _a = admitted(budget.admit(ip("2001:db8::1"), true));
        let _b = admitted(budget.admit(ip("2001:db8::2"), true));
        assert!(matches!(budget.admit(ip("2001:db8::ffff:3"), true), Admission::AddressFull));
        let _c = admitted(budget.admit(ip("2001:db8:0:1::1"), true));
    }
}
