//! Reconnect delays: exponential from [`INITIAL`] to [`MAX`], with ±25 % jitter so many clients
//! cut off by one server restart do not reconnect in lockstep. Sans-IO: randomness comes in as
//! an argument.

use std::time::Duration;

/// First delay after a lost or failed connection.
pub const INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX: Duration = Duration::from_secs(15);

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// The delay before the next attempt. `unit` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX);
        base.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// Back to [`INITIAL`], after a connection that worked.
    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

/// A small non-cryptographic generator for jitter (xorshift64*), seeded from the clock.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }
}

impl Jitter {
    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.5), INITIAL);
        assert_eq!(b.next_delay(0.5), INITIAL * 2);
        for _ in 0..20 {
            b.next_delay(0.5);
        }
        assert_eq!(b.next_delay(0.5), MAX);
        assert_eq!(b.next_delay(0.0), MAX.mul_f64(0.75));
        assert_eq!(b.next_delay(1.0), MAX.mul_f64(1.25));
        b.reset();
        assert_eq!(b.next_delay(0.5), INITIAL);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::default();
        for _ in 0..10_000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
