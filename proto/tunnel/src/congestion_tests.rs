//! The model through a simulated path: a bottleneck of fixed rate with a 100 ms queue, a fixed
//! propagation RTT, and optional loss of every n-th packet. The sender always has data and
//! sends whenever the window allows.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{CWND_GAIN, MIN_MODEL_RTT, Mode, Model, PROBE_RTT_PACKETS};

const MTU: u16 = 1200;

struct Path {
    /// Bottleneck, bytes per second.
    rate: f64,
    rtt: Duration,
    /// Every n-th packet is lost (0: none).
    lose_every: u64,
    /// Flow control: the sender never has more than this in flight, and says it is
    /// app-limited when held there (as quinn does).
    flow_limit: u64,
}

/// What a run saw.
struct Run {
    /// (time since start, bytes acknowledged so far), at each batch of acks.
    delivered: Vec<(Duration, u64)>,
    modes: Vec<(Duration, Mode)>,
    windows: Vec<(Duration, u64)>,
}

impl Run {
    /// Bytes per second acknowledged between `from` and `to`.
    fn goodput(&self, from: Duration, to: Duration) -> f64 {
        let at = |t: Duration| self.delivered.iter().rev().find(|(when, _)| *when <= t).map_or(0, |&(_, d)| d);
        (at(to) - at(from)) as f64 / (to - from).as_secs_f64()
    }
}

fn simulate(model: &mut Model, start: Instant, path: &Path, length: Duration) -> Run {
    let mtu = u64::from(MTU);
    let per_packet = Duration::from_secs_f64(mtu as f64 / path.rate);
    // In flight: (sent at, acknowledged at, lost).
    let mut flight: VecDeque<(Instant, Instant, bool)> = VecDeque::new();
    let (mut now, mut free_at, mut sent, mut delivered) = (start, start, 0u64, 0u64);
    let mut run = Run { delivered: Vec::new(), modes: Vec::new(), windows: Vec::new() };
    while now < start + length {
        let room = model.window().min(path.flow_limit);
        let held = model.window() > path.flow_limit;
        while (flight.len() as u64 + 1) * mtu <= room {
            sent += 1;
            let leaves = free_at.max(now) + per_packet;
            let queued_too_long = leaves - now > Duration::from_millis(100);
            if !queued_too_long {
                free_at = leaves;
            }
            let lost = queued_too_long || (path.lose_every > 0 && sent % path.lose_every == 0);
            flight.push_back((now, leaves + path.rtt, lost));
        }
        let Some(&(_, next, _)) = flight.front() else { break };
        now = next;
        while let Some(&(sent_at, acked_at, lost)) = flight.front() {
            if acked_at > now {
                break;
            }
            flight.pop_front();
            if !lost {
                delivered += mtu;
                model.on_ack(now, sent_at, mtu, held);
            }
        }
        model.on_end_acks(now, flight.len() as u64 * mtu, held);
        let t = now - start;
        run.delivered.push((t, delivered));
        run.windows.push((t, model.window()));
        if run.modes.last().is_none_or(|&(_, m)| std::mem::discriminant(&m) != std::mem::discriminant(&model.mode())) {
            run.modes.push((t, model.mode()));
        }
    }
    run
}

const SECOND: Duration = Duration::from_secs(1);

fn path_200_mbit_50_ms(lose_every: u64) -> Path {
    Path { rate: 25e6, rtt: Duration::from_millis(50), lose_every, flow_limit: u64::MAX }
}

#[test]
fn startup_finds_the_bottleneck_and_the_window_settles_at_the_gain_times_the_bdp() {
    let start = Instant::now();
    let mut model = Model::new(start, MTU);
    let path = path_200_mbit_50_ms(0);
    let run = simulate(&mut model, start, &path, 6 * SECOND);
    assert_eq!(model.mode(), Mode::ProbeBw, "modes: {:?}", run.modes);
    let bandwidth = model.bandwidth();
    assert!((bandwidth / path.rate - 1.0).abs() < 0.1, "estimated {bandwidth:.0} B/s of {}", path.rate);
    let bdp = path.rate * path.rtt.as_secs_f64();
    let window = model.window() as f64;
    assert!((window / (CWND_GAIN * bdp) - 1.0).abs() < 0.2, "window {window:.0} for a BDP of {bdp:.0}");
    let goodput = run.goodput(2 * SECOND, 6 * SECOND);
    assert!(goodput >= 0.95 * path.rate, "goodput {goodput:.0} B/s of {}", path.rate);
}

/// A sender held back by flow control, with more than the path holds allowed in flight: quinn
/// then says it is app-limited, yet the pipe is full, and startup must still end (else its
/// window grows without end and the flow-control limit, not the model, sets the queue).
#[test]
fn a_flow_controlled_sender_that_fills_the_pipe_still_leaves_startup() {
    let start = Instant::now();
    let mut model = Model::new(start, MTU);
    let path = Path { flow_limit: 4 << 20, ..path_200_mbit_50_ms(0) };
    let run = simulate(&mut model, start, &path, 4 * SECOND);
    assert_eq!(model.mode(), Mode::ProbeBw, "modes: {:?}", run.modes);
    let bdp = path.rate * path.rtt.as_secs_f64();
    assert!((model.window() as f64) < 1.1 * CWND_GAIN * bdp, "window {} for a BDP of {bdp:.0}", model.window());
}

/// A path of 100 µs (loopback, a LAN) gets a window of at least [`MIN_MODEL_RTT`] of its rate:
/// there, the peers' processing, not the path, sets the RTT under load.
#[test]
fn a_very_short_path_gets_a_window_of_at_least_the_model_rtt() {
    let start = Instant::now();
    let mut model = Model::new(start, MTU);
    let path = Path { rtt: Duration::from_micros(100), ..path_200_mbit_50_ms(0) };
    let run = simulate(&mut model, start, &path, 2 * SECOND);
    assert_eq!(model.mode(), Mode::ProbeBw, "modes: {:?}", run.modes);
    let least = CWND_GAIN * path.rate * MIN_MODEL_RTT.as_secs_f64();
    assert!(model.window() as f64 >= 0.9 * least, "window {} for {least:.0}", model.window());
}

#[test]
fn random_loss_does_not_slow_it_down() {
    for lose_every in [1000, 100, 33] {
        let start = Instant::now();
        let mut model = Model::new(start, MTU);
        let path = path_200_mbit_50_ms(lose_every);
        let run = simulate(&mut model, start, &path, 6 * SECOND);
        let goodput = run.goodput(2 * SECOND, 6 * SECOND);
        let most = path.rate * (1.0 - 1.0 / lose_every as f64);
        assert!(goodput >= 0.93 * most, "1 in {lose_every} lost: goodput {goodput:.0} B/s of {most:.0}");
    }
}

#[test]
fn every_10_s_it_drains_the_queue_to_measure_the_rtt_and_comes_back() {
    let start = Instant::now();
    let mut model = Model::new(start, MTU);
    let path = path_200_mbit_50_ms(0);
    let run = simulate(&mut model, start, &path, 14 * SECOND);
    let probes: Vec<Duration> =
        run.modes.iter().filter(|(_, m)| matches!(m, Mode::ProbeRtt(_))).map(|&(t, _)| t).collect();
    assert_eq!(probes.len(), 1, "modes: {:?}", run.modes);
    assert!(probes[0] >= 10 * SECOND && probes[0] <= 12 * SECOND, "probed at {:?}", probes[0]);
    let small = u64::from(MTU) * PROBE_RTT_PACKETS;
    assert!(run.windows.iter().any(|&(t, w)| t > probes[0] && w == small), "the window never drained");
    assert_eq!(model.mode(), Mode::ProbeBw, "modes: {:?}", run.modes);
    let goodput = run.goodput(2 * SECOND, 14 * SECOND);
    assert!(goodput >= 0.93 * path.rate, "goodput {goodput:.0} B/s with a probe");
}

#[test]
fn persistent_congestion_starts_over_from_the_initial_window() {
    let start = Instant::now();
    let mut model = Model::new(start, MTU);
    let initial = model.window();
    let run = simulate(&mut model, start, &path_200_mbit_50_ms(0), 3 * SECOND);
    assert!(model.window() > 10 * initial, "window {} after {} samples", model.window(), run.windows.len());
    model.restart(start + 3 * SECOND);
    assert_eq!((model.mode(), model.window()), (Mode::Startup, initial));
}
