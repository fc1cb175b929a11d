//! wmproxy's BBR-style congestion controller (`congestion = "bbr"`, the default): it sizes the
//! window from a model of the path (bottleneck rate × minimum RTT) and does not back off on
//! random loss, which is what a tunnel over Wi-Fi and mobile links meets. On the bench's
//! 200 Mbit/s grid (`bench/README.md`) CUBIC carried 3–21 % of it at 1 % loss; quinn's own
//! (experimental) BBR carried about as much as this one but kept a larger queue: small
//! exchanges beside a bulk transfer waited p50 76–79 ms on a 50 ms path, against 63–68 ms
//! here.
//!
//! It follows BBRv1's core (Cardwell et al., "BBR: Congestion-Based Congestion Control",
//! 2016), shaped by what quinn lets a controller do (set a window; quinn paces at 1.25 ×
//! window / smoothed RTT):
//! - the bottleneck rate is the largest delivery rate of the last [`BW_ROUNDS`] round trips,
//!   each measured as bytes acknowledged over one round trip;
//! - the minimum RTT is the smallest sample of the last [`MIN_RTT_WINDOW`]; when it is that
//!   old, the window drops to [`PROBE_RTT_PACKETS`] packets for [`PROBE_RTT_TIME`] (or a round
//!   trip) to drain the queue and measure it again;
//! - startup doubles the window each round trip until the rate stops growing by 25 % for three
//!   rounds (rounds in which the sender was held back count when its bytes in flight filled
//!   the path anyway: flow control makes quinn report a sender app-limited); then the window
//!   is [`CWND_GAIN`] × the path's bandwidth-delay product;
//! - the window is sized for a round trip of at least [`MIN_MODEL_RTT`] (5 ms): on loopback
//!   and LANs the peers' processing, not the path, sets the RTT under load;
//! - acknowledgements that arrive in bursts (a receiver that batches them; on loopback, a
//!   userspace peer) add their largest recent excess over the rate to the window, as BBR's
//!   ack-aggregation allowance does (without it, one loopback stream fell from 5.5 to
//!   0.75 Gbit/s);
//! - loss changes nothing but persistent congestion (every packet lost for several PTOs),
//!   which restarts from the minimum window.
//!
//! The model ([`Model`]) is sans-IO: time and samples come in as arguments, and the tests
//! below drive it through a simulated bottleneck.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Round trips over which the bottleneck rate is the largest sample.
pub const BW_ROUNDS: u64 = 10;
/// How long a minimum-RTT sample stands before it is measured again.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// The window while measuring the minimum RTT, in packets.
pub const PROBE_RTT_PACKETS: u64 = 4;
/// How long the window stays that small.
pub const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The window in steady state, in bandwidth-delay products: room for the rate to grow, and
/// the queue it keeps at the bottleneck (a quarter of the RTT; bursts of acknowledgements get
/// their own allowance). BBR's 2.0 goes with pacing at the measured rate; quinn paces at
/// 1.25 × window / RTT, so here the window alone bounds the queue. On the bench's 50 ms, 1 %
/// loss path small exchanges beside a bulk transfer see p50 63–68 ms with it, at full rate.
/// (2.0 has not been measured since start-up learned to end under flow control.)
pub const CWND_GAIN: f64 = 1.25;
/// The most the window allows for bursty acknowledgements, in time at the bottleneck rate
/// (as Linux's BBR caps it).
pub const MAX_AGGREGATION: Duration = Duration::from_millis(100);
/// The shortest round trip the window is sized for. Below it a queue costs too little to
/// save, and the RTT under load is mostly the peers' own processing, which the minimum RTT
/// does not see: between two processes on loopback (RTT 30–50 µs idle) the window sized from
/// the minimum held the tunnel to 0.4–0.5 Gbit/s in two of three runs, against 4.5 in the
/// third and 5.3 with CUBIC. On a path of this RTT or longer it changes nothing.
pub const MIN_MODEL_RTT: Duration = Duration::from_millis(5);
/// An ack-aggregation epoch lasts at most a round trip, and may last this long on paths whose
/// round trip is shorter (loopback: a peer's processing batches its acknowledgements).
const MIN_EPOCH: Duration = Duration::from_millis(5);
/// Startup ends after this many round trips without 25 % more rate.
const STARTUP_FLAT_ROUNDS: u32 = 3;
/// The first window, in packets (RFC 9002's 10).
const INITIAL_PACKETS: u64 = 10;
/// The window never goes below this, in packets.
const MIN_PACKETS: u64 = 4;

/// [`ControllerFactory`] for [`Bbr`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BbrConfig;

impl ControllerFactory for BbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bbr { model: Model::new(now, current_mtu) })
    }
}

/// The quinn adapter around [`Model`].
#[derive(Debug, Clone)]
pub struct Bbr {
    model: Model,
}

impl Controller for Bbr {
    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, _rtt: &quinn_proto::RttEstimator) {
        self.model.on_ack(now, sent, bytes, app_limited);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, _largest: Option<u64>) {
        self.model.on_end_acks(now, in_flight, app_limited);
    }

    fn on_congestion_event(&mut self, now: Instant, _sent: Instant, is_persistent_congestion: bool, _lost: u64) {
        if is_persistent_congestion {
            self.model.restart(now);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.mtu = u64::from(new_mtu);
    }

    fn window(&self) -> u64 {
        self.model.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.model.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Where the controller is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Doubling each round trip, looking for the bottleneck.
    Startup,
    /// Letting the queue startup built drain (window: one bandwidth-delay product).
    Drain,
    /// Steady state: [`CWND_GAIN`] bandwidth-delay products.
    ProbeBw,
    /// A few packets in flight, to see the path's RTT without a queue; since this instant.
    ProbeRtt(Instant),
}

/// The path model and the window it gives.
#[derive(Debug, Clone)]
pub struct Model {
    mtu: u64,
    mode: Mode,
    /// The window while in startup (grows with every acknowledged byte).
    startup_window: u64,
    /// Bytes acknowledged so far.
    delivered: u64,
    /// The current round: when it began and what had been delivered then.
    round_start: Instant,
    round_delivered: u64,
    round: u64,
    /// Whether the sender ran out of data in this round (its sample then only counts if larger,
    /// unless the pipe was full anyway).
    round_app_limited: bool,
    /// The most bytes in flight seen in this round: a sender held back by flow control rather
    /// than by its window reports itself app-limited, yet may fill the path.
    round_in_flight: u64,
    /// Rate samples (round, bytes/s), the last [`BW_ROUNDS`] rounds.
    samples: VecDeque<(u64, f64)>,
    /// The largest of them, kept as they change: the window is asked for at every send.
    bandwidth: f64,
    /// Startup's plateau test: the rate that must grow by 25 %, and rounds without.
    plateau: (f64, u32),
    /// Bytes acknowledged since the last batch of acknowledgements ended.
    batch_acked: u64,
    /// Ack aggregation: since when acknowledgements have come faster than the bottleneck
    /// rate, and how many bytes they acknowledged.
    epoch: Option<(Instant, u64)>,
    /// The largest excess of each of the last [`BW_ROUNDS`] rounds: bytes acknowledged beyond
    /// what the bottleneck rate explains, (round, bytes).
    excess: VecDeque<(u64, u64)>,
    min_rtt: Option<(Duration, Instant)>,
}

impl Model {
    /// A fresh model at `now`, for datagrams of `mtu` bytes.
    pub fn new(now: Instant, mtu: u16) -> Self {
        let mtu = u64::from(mtu);
        Self {
            mtu,
            mode: Mode::Startup,
            startup_window: INITIAL_PACKETS * mtu,
            delivered: 0,
            round_start: now,
            round_delivered: 0,
            round: 0,
            round_app_limited: false,
            round_in_flight: 0,
            samples: VecDeque::with_capacity(BW_ROUNDS as usize + 1),
            bandwidth: 0.0,
            plateau: (0.0, 0),
            batch_acked: 0,
            epoch: None,
            excess: VecDeque::with_capacity(BW_ROUNDS as usize + 1),
            min_rtt: None,
        }
    }

    /// Where the controller is.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The estimated bottleneck rate, bytes per second (0 before the first round ends).
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    /// The bandwidth-delay product, bytes (`None` before the first round ends), of a round
    /// trip of at least [`MIN_MODEL_RTT`].
    fn bdp(&self) -> Option<u64> {
        let (rtt, _) = self.min_rtt?;
        let bdp = self.bandwidth() * rtt.max(MIN_MODEL_RTT).as_secs_f64();
        (bdp > 0.0).then_some(bdp as u64)
    }

    /// The congestion window, bytes.
    pub fn window(&self) -> u64 {
        let floor = MIN_PACKETS * self.mtu;
        let window = match (self.mode, self.bdp()) {
            (Mode::Startup, _) | (_, None) => self.startup_window,
            (Mode::Drain, Some(bdp)) => bdp,
            (Mode::ProbeBw, Some(bdp)) => (bdp as f64 * CWND_GAIN) as u64 + self.aggregation(),
            (Mode::ProbeRtt(_), Some(_)) => PROBE_RTT_PACKETS * self.mtu,
        };
        window.max(floor)
    }

    /// The window's allowance for acknowledgements that come in bursts (a receiver or a path
    /// that batches them: on loopback a userspace peer acknowledges what it processed in one
    /// go): the largest excess of the last rounds, at most [`MAX_AGGREGATION`] of the rate.
    fn aggregation(&self) -> u64 {
        let most = (self.bandwidth() * MAX_AGGREGATION.as_secs_f64()) as u64;
        self.excess.iter().map(|&(_, bytes)| bytes).max().unwrap_or(0).min(most)
    }

    /// Tracks how far acknowledgements run ahead of the bottleneck rate (BBR's "extra acked"):
    /// an epoch starts when they fall behind it, or after a round trip (a rate estimate a
    /// little low must not add up to a large excess over a long epoch); the excess is what the
    /// epoch acknowledged beyond rate × its length.
    fn track_aggregation(&mut self, now: Instant) {
        let acked = std::mem::take(&mut self.batch_acked);
        let (start, bytes) = self.epoch.unwrap_or((now, 0));
        let length = now.saturating_duration_since(start);
        let expected = (self.bandwidth() * length.as_secs_f64()) as u64;
        if bytes <= expected || length > self.min_rtt_or_zero().max(MIN_EPOCH) {
            self.epoch = Some((now, acked));
            return;
        }
        let bytes = bytes + acked;
        self.epoch = Some((start, bytes));
        let excess = bytes - expected;
        match self.excess.back_mut() {
            Some((round, most)) if *round == self.round => *most = (*most).max(excess),
            _ => self.excess.push_back((self.round, excess)),
        }
    }

    /// A packet sent at `sent`, of `bytes`, was acknowledged at `now`.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.delivered += bytes;
        self.batch_acked += bytes;
        if self.mode == Mode::Startup && !app_limited {
            self.startup_window = self.startup_window.saturating_add(bytes);
        }
        let rtt = now.saturating_duration_since(sent);
        let stale = self.min_rtt.is_none_or(|(_, at)| now.saturating_duration_since(at) > MIN_RTT_WINDOW);
        if self.min_rtt.is_none_or(|(min, _)| rtt <= min) {
            self.min_rtt = Some((rtt, now));
        } else if stale && !matches!(self.mode, Mode::ProbeRtt(_) | Mode::Startup) {
            // The minimum is old: drain the queue and measure it again.
            self.mode = Mode::ProbeRtt(now);
            self.min_rtt = Some((rtt, now));
        }
        // A packet sent after the round began: a round trip has passed.
        if sent >= self.round_start {
            self.end_round(now);
        }
        self.round_app_limited |= app_limited;
    }

    /// The end of a batch of acknowledgements: `in_flight` bytes remain unacknowledged.
    pub fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool) {
        self.round_app_limited |= app_limited;
        self.round_in_flight = self.round_in_flight.max(in_flight);
        self.track_aggregation(now);
        match self.mode {
            Mode::Drain if self.bdp().is_some_and(|bdp| in_flight <= bdp) => self.mode = Mode::ProbeBw,
            Mode::ProbeRtt(since) => {
                let long_enough = now.saturating_duration_since(since) >= PROBE_RTT_TIME.max(self.min_rtt_or_zero());
                if long_enough && in_flight <= PROBE_RTT_PACKETS * self.mtu {
                    self.mode = Mode::ProbeBw;
                    if let Some((rtt, _)) = self.min_rtt {
                        self.min_rtt = Some((rtt, now));
                    }
                }
            }
            _ => {}
        }
    }

    /// Persistent congestion: the path lost everything for a while. Start over.
    pub fn restart(&mut self, now: Instant) {
        *self = Self::new(now, self.mtu as u16);
    }

    fn min_rtt_or_zero(&self) -> Duration {
        self.min_rtt.map_or(Duration::ZERO, |(rtt, _)| rtt)
    }

    fn end_round(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round_start).as_secs_f64();
        if elapsed > 0.0 {
            let rate = (self.delivered - self.round_delivered) as f64 / elapsed;
            // An app-limited round says little of the path, unless it went faster or filled
            // the pipe all the same.
            let pipe_full = self.bdp().is_some_and(|bdp| self.round_in_flight >= bdp);
            let telling = !self.round_app_limited || pipe_full;
            if telling || rate > self.bandwidth() {
                self.samples.push_back((self.round, rate));
            }
            prune(&mut self.samples, self.round);
            prune(&mut self.excess, self.round);
            self.bandwidth = self.samples.iter().map(|&(_, rate)| rate).fold(0.0, f64::max);
            if self.mode == Mode::Startup && telling {
                self.check_plateau();
            }
        }
        self.round += 1;
        self.round_start = now;
        self.round_delivered = self.delivered;
        self.round_app_limited = false;
        self.round_in_flight = 0;
    }

    fn check_plateau(&mut self) {
        let bandwidth = self.bandwidth();
        let (target, flat) = &mut self.plateau;
        if bandwidth >= *target * 1.25 {
            *target = bandwidth;
            *flat = 0;
        } else {
            *flat += 1;
            if *flat >= STARTUP_FLAT_ROUNDS {
                self.mode = Mode::Drain;
            }
        }
    }
}

/// Drops the entries of a per-round window older than [`BW_ROUNDS`] rounds before `now`; each
/// window holds at most one entry per round, so at most that many.
fn prune<T>(window: &mut VecDeque<(u64, T)>, now: u64) {
    while window.front().is_some_and(|&(round, _)| round + BW_ROUNDS <= now) {
        window.pop_front();
    }
}

#[cfg(test)]
#[path = "congestion_tests.rs"]
mod tests;
