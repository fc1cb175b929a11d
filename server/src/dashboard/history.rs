//! Traffic history for the dashboard (`GET /history`). Every [`INTERVAL`] the sampler reads each
//! published service's byte counters and keeps the rates since the previous sample. Bounded: the
//! last [`SAMPLES`] samples (15 minutes), each naming at most [`MAX_SERIES`] services (the
//! busiest of that sample); the totals count every service.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ServiceLabels};

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: 15 minutes.
pub const SAMPLES: usize = 450;
/// Services named in one sample.
pub const MAX_SERIES: usize = 32;

/// One sample: rates in bytes per second since the previous one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Users to services, every service.
    pub in_bps: f64,
    /// Services to users, every service.
    pub out_bps: f64,
    /// The busiest services, busiest first.
    pub services: Vec<ServiceRate>,
}

/// One service's rates in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceRate {
    /// The client.
    pub client: String,
    /// Its service.
    pub service: String,
    /// Users to the service, bytes per second.
    pub in_bps: f64,
    /// The service to its users, bytes per second.
    pub out_bps: f64,
}

/// What `GET /history` answers.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// Bytes from users to services since the server started (as sampled).
    pub total_in: u64,
    /// Bytes from services to users since the server started (as sampled).
    pub total_out: u64,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    /// Each service's counters at the previous sample.
    last: HashMap<ServiceLabels, (u64, u64)>,
    last_at: Option<Instant>,
    totals: (u64, u64),
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    state: Mutex<State>,
}

impl History {
    /// Takes a sample from each service's byte counters now (`(labels, in, out)`).
    pub fn sample(&self, counters: Vec<(ServiceLabels, u64, u64)>, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let previous = state.last_at.replace(now);
        let last = std::mem::take(&mut state.last);
        let secs = previous.map_or(0.0, |p| now.duration_since(p).as_secs_f64());
        let mut rates = Vec::with_capacity(counters.len());
        for (labels, bytes_in, bytes_out) in counters {
            // A service published again starts from zero: then all it has counted is new.
            let (was_in, was_out) = last.get(&labels).copied().unwrap_or((0, 0));
            let new_in = if bytes_in >= was_in { bytes_in - was_in } else { bytes_in };
            let new_out = if bytes_out >= was_out { bytes_out - was_out } else { bytes_out };
            state.totals = (state.totals.0.saturating_add(new_in), state.totals.1.saturating_add(new_out));
            if secs > 0.0 {
                rates.push((labels.clone(), new_in as f64 / secs, new_out as f64 / secs));
            }
            state.last.insert(labels, (bytes_in, bytes_out));
        }
        if previous.is_none() {
            return;
        }
        let (in_bps, out_bps) = rates.iter().fold((0.0, 0.0), |(i, o), (_, ri, ro)| (i + ri, o + ro));
        rates.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
        rates.truncate(MAX_SERIES);
        let services = rates
            .into_iter()
            .map(|(labels, in_bps, out_bps)| ServiceRate {
                client: labels.client,
                service: labels.service,
                in_bps,
                out_bps,
            })
            .collect();
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        if state.samples.len() == SAMPLES {
            state.samples.pop_front();
        }
        state.samples.push_back(Sample { at_ms: u64::try_from(at_ms).unwrap_or(u64::MAX), in_bps, out_bps, services });
    }

    /// The samples kept.
    pub fn view(&self) -> HistoryView {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (total_in, total_out) = state.totals;
        HistoryView {
            interval_secs: INTERVAL.as_secs(),
            total_in,
            total_out,
            samples: state.samples.iter().cloned().collect(),
        }
    }

    /// Bytes in and out since the server started (as sampled).
    pub fn totals(&self) -> (u64, u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).totals
    }
}

/// Samples `metrics`' service counters into `history` every [`INTERVAL`] until `shutdown`.
pub async fn run(history: Arc<History>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            now = ticks.tick() => history.sample(metrics.services.bytes(), now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(service: &str) -> ServiceLabels {
        ServiceLabels { client: "home".into(), service: service.into() }
    }

    #[test]
    fn rates_are_per_second_between_samples_and_the_ring_is_bounded() {
        let history = History::default();
        let start = Instant::now();
        history.sample(vec![(labels("web"), 1000, 0)], start);
        assert!(history.view().samples.is_empty(), "the first sample only sets the baseline");

        history.sample(vec![(labels("web"), 5000, 2000), (labels("ssh"), 100, 100)], start + Duration::from_secs(2));
        let samples = history.view().samples;
        assert_eq!(samples.len(), 1);
        assert_eq!((samples[0].in_bps, samples[0].out_bps), (2000.0 + 50.0, 1000.0 + 50.0));
        assert_eq!(samples[0].services[0].service, "web", "busiest first");
        assert_eq!(history.totals(), (5100, 2100), "the baseline counts too");

        // Published again: its counters restart from zero.
        history.sample(vec![(labels("web"), 400, 0)], start + Duration::from_secs(4));
        assert_eq!(history.view().samples[1].in_bps, 200.0);

        let many: Vec<_> = (0..100u64).map(|i| (labels(&format!("s{i}")), i * 1000, 0)).collect();
        for step in 0..(SAMPLES as u64 + 10) {
            history.sample(many.clone(), start + Duration::from_secs(6 + 2 * step));
        }
        let view = history.view();
        assert_eq!(view.samples.len(), SAMPLES);
        assert!(view.samples.iter().all(|s| s.services.len() <= MAX_SERIES));
    }
}
