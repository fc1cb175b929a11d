//! Picking a backend among a group's eligible ones, by the group's [`Policy`]. Pure and
//! unit-tested; the caller holds the group's lock while picking.

use std::collections::HashMap;
use std::net::IpAddr;

use wmproxy_config::Policy;

/// An eligible backend, as the selector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Stable for the backend's membership.
    pub id: u64,
    /// At least 1.
    pub weight: u32,
    /// Connections (or flows) it is serving now.
    pub active: usize,
    /// Hash of the backend's identity (client and service), stable across reconnects.
    pub hash_key: u64,
}

/// The per-group state of a policy.
#[derive(Debug)]
pub struct Selector {
    policy: Policy,
    next: usize,
    /// Smooth weighted round robin: each backend's current weight.
    current: HashMap<u64, i64>,
}

impl Selector {
    /// A selector for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy, next: 0, current: HashMap::new() }
    }

    /// Forgets a backend that left the group.
    pub fn forget(&mut self, id: u64) {
        self.current.remove(&id);
    }

    /// The index in `candidates` of the backend for a new connection from `user`.
    pub fn pick(&mut self, candidates: &[Candidate], user: IpAddr) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let rotation = self.next;
        self.next = self.next.wrapping_add(1);
        match self.policy {
            Policy::RoundRobin => Some(rotation % candidates.len()),
            Policy::WeightedRoundRobin => Some(self.smooth_weighted(candidates)),
            Policy::LeastConnections => Some(least_connections(candidates, rotation)),
            Policy::IpHash => rendezvous(candidates, user),
        }
    }

    /// nginx's smooth weighted round robin: every candidate gains its weight, the largest is
    /// picked and loses the total. Over any run of `total` picks each gets exactly its weight,
    /// evenly interleaved.
    fn smooth_weighted(&mut self, candidates: &[Candidate]) -> usize {
        let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
        let mut best = 0;
        let mut best_weight = i64::MIN;
        for (i, c) in candidates.iter().enumerate() {
            let current = self.current.entry(c.id).or_insert(0);
            *current += i64::from(c.weight);
            if *current > best_weight {
                best = i;
                best_weight = *current;
            }
        }
        if let Some(current) = self.current.get_mut(&candidates[best].id) {
            *current -= total;
        }
        best
    }
}

/// The fewest active connections per unit of weight; ties go to the next in rotation.
fn least_connections(candidates: &[Candidate], rotation: usize) -> usize {
    let n = candidates.len();
    let mut best = rotation % n;
    for step in 1..n {
        let i = (rotation + step) % n;
        let (c, b) = (&candidates[i], &candidates[best]);
        // c.active / c.weight < b.active / b.weight, without division.
        if (c.active as u128) * u128::from(b.weight) < (b.active as u128) * u128::from(c.weight) {
            best = i;
        }
    }
    best
}

/// Weighted rendezvous (highest random weight) hashing of the user's IP: each candidate scores
/// `weight / -ln(u)` with `u` a hash of (user, backend) in (0, 1), and the highest wins. A
/// backend leaving moves only the users it had; one joining takes only its share.
fn rendezvous(candidates: &[Candidate], user: IpAddr) -> Option<usize> {
    let user = ip_hash(user);
    let mut best = None;
    let mut best_score = f64::NEG_INFINITY;
    for (i, c) in candidates.iter().enumerate() {
        let h = mix(user ^ mix(c.hash_key));
        // 53 random bits, strictly inside (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(c.weight) / -u.ln();
        if score > best_score {
            best = Some(i);
            best_score = score;
        }
    }
    best
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            mix((bits >> 64) as u64 ^ mix(bits as u64))
        }
    }
}

/// splitmix64's finalizer: a cheap, well-mixing 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of a backend's identity (FNV-1a of `client`, a zero byte, `service`).
pub fn identity_hash(client: &str, service: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in client.bytes().chain([0]).chain(service.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Candidate {
                id: i as u64,
                weight: *w,
                active: 0,
                hash_key: identity_hash("c", &i.to_string()),
            })
            .collect()
    }

    fn user(i: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000 + i).to_be_bytes())
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let mut s = Selector::new(Policy::RoundRobin);
        let c = backends(&[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| s.pick(&c, user(0)).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(s.pick(&[], user(0)), None);
    }

    #[test]
    fn smooth_weighted_round_robin_matches_nginx() {
        let mut s = Selector::new(Policy::WeightedRoundRobin);
        let c = backends(&[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| s.pick(&c, user(0)).unwrap()).collect();
        // nginx's documented sequence for weights 5, 1, 1: a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_connections_weighs_active_connections() {
        let mut s = Selector::new(Policy::LeastConnections);
        let mut c = backends(&[1, 1]);
        c[0].active = 50;
        for _ in 0..10 {
            assert_eq!(s.pick(&c, user(0)), Some(1));
        }
        c[1].active = 10;
        c[1].weight = 1;
        c[0].weight = 10; // 50/10 = 5 per unit < 10/1
        assert_eq!(s.pick(&c, user(0)), Some(0));
    }

    #[test]
    fn ip_hash_moves_only_the_departed_backends_users() {
        let mut s = Selector::new(Policy::IpHash);
        let all = backends(&[1, 1, 1, 1]);
        let before: Vec<u64> = (0..1000).map(|i| all[s.pick(&all, user(i)).unwrap()].id).collect();
        let mut counts = [0usize; 4];
        for id in &before {
            counts[*id as usize] += 1;
        }
        assert!(counts.iter().all(|n| (200..300).contains(n)), "spread: {counts:?}");

        let without_2: Vec<_> = all.iter().copied().filter(|c| c.id != 2).collect();
        for (i, old) in before.iter().enumerate() {
            let new = without_2[s.pick(&without_2, user(i as u32)).unwrap()].id;
            if *old != 2 {
                assert_eq!(new, *old, "user {i} moved although its backend stayed");
            }
        }
    }
}
