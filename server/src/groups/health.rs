//! A backend's health: the active-check state machine (consecutive `rise`/`fall` counters) and
//! the passive one (`max_fails` failed dials within `fail_timeout` eject for `fail_timeout`,
//! then trial traffic). Pure: time comes in as an argument, so tests drive it directly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use wmproxy_wire::HealthSpec;

/// Passive-check settings of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Failed dials within `fail_timeout` that eject a backend; `0` disables passive checks.
    pub max_fails: u32,
    /// The failure window, and how long an ejection lasts.
    pub fail_timeout: Duration,
}

/// What a backend's health says, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Receives new work.
    Healthy,
    /// Its active check has not (yet) passed `rise` times in a row.
    Unhealthy,
    /// Too many failed dials: no work until the ejection ends.
    Ejected,
}

/// One backend's health. Counters are consecutive: a success resets the failure streak and a
/// failure the success streak (the counter that never resets is frp's bug, not ours).
#[derive(Debug, Clone)]
pub struct Health {
    active: Option<HealthSpec>,
    passive: Passive,
    healthy: bool,
    ok_streak: u32,
    fail_streak: u32,
    checks: u64,
    last_latency: Option<Duration>,
    /// Times of recent failed dials, at most `max_fails` of them.
    recent_fails: VecDeque<Instant>,
    ejected_until: Option<Instant>,
    /// Back from an ejection: the next failed dial ejects again at once.
    trial: bool,
}

/// A copy of the counters, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HealthView {
    /// The state now.
    pub state: HealthState,
    /// Consecutive passed active checks.
    pub ok_streak: u32,
    /// Consecutive failed active checks.
    pub fail_streak: u32,
    /// Active checks reported so far.
    pub checks: u64,
    /// Duration of the last active check (milliseconds in JSON).
    #[serde(rename = "last_latency_ms", serialize_with = "as_millis")]
    pub last_latency: Option<Duration>,
    /// Failed dials in the current window.
    pub recent_fails: u32,
}

fn as_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

impl Health {
    /// New passive thresholds (a reload changed the group's); the state so far is kept.
    pub fn set_passive(&mut self, passive: Passive) {
        self.passive = passive;
    }

    /// A new backend's health. With an active check it starts unhealthy unless
    /// `start_healthy`; without one it starts healthy.
    pub fn new(active: Option<HealthSpec>, passive: Passive) -> Self {
        Self {
            healthy: active.is_none_or(|a| a.start_healthy),
            active,
            passive,
            ok_streak: 0,
            fail_streak: 0,
            checks: 0,
            last_latency: None,
            recent_fails: VecDeque::new(),
            ejected_until: None,
            trial: false,
        }
    }

    /// Applies one active check result. Returns the new "healthy" value when it changed.
    pub fn report(&mut self, ok: bool, latency: Duration) -> Option<bool> {
        let spec = self.active?;
        self.checks += 1;
        self.last_latency = Some(latency);
        let was = self.healthy;
        if ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if !self.healthy && self.ok_streak >= spec.rise {
                self.healthy = true;
                // `rise` successes also end a passive ejection.
                self.ejected_until = None;
                self.recent_fails.clear();
                self.trial = false;
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if self.healthy && self.fail_streak >= spec.fall {
                self.healthy = false;
            }
        }
        (self.healthy != was).then_some(self.healthy)
    }

    /// A dial through this backend failed before any byte was relayed. Returns whether this
    /// ejected it.
    pub fn dial_failed(&mut self, now: Instant) -> bool {
        let Passive { max_fails, fail_timeout } = self.passive;
        if max_fails == 0 {
            return false;
        }
        while self.recent_fails.front().is_some_and(|t| now.saturating_duration_since(*t) >= fail_timeout) {
            self.recent_fails.pop_front();
        }
        self.recent_fails.push_back(now);
        if !self.trial && self.recent_fails.len() < max_fails as usize {
            return false;
        }
        self.ejected_until = Some(now + fail_timeout);
        self.recent_fails.clear();
        self.trial = true;
        if self.active.is_some() {
            // With active checks on, `rise` passed checks bring it back.
            self.healthy = false;
            self.ok_streak = 0;
        }
        true
    }

    /// A dial through this backend succeeded: a trial is over, and old failures forgotten.
    pub fn dial_succeeded(&mut self) {
        self.recent_fails.clear();
        self.trial = false;
    }

    /// Whether the backend may receive new work at `now`.
    pub fn eligible(&self, now: Instant) -> bool {
        self.healthy && self.ejected_until.is_none_or(|t| now >= t)
    }

    /// The counters as of `now`.
    pub fn view(&self, now: Instant) -> HealthView {
        let state = if self.ejected_until.is_some_and(|t| now < t) {
            HealthState::Ejected
        } else if self.healthy {
            HealthState::Healthy
        } else {
            HealthState::Unhealthy
        };
        HealthView {
            state,
            ok_streak: self.ok_streak,
            fail_streak: self.fail_streak,
            checks: self.checks,
            last_latency: self.last_latency,
            recent_fails: u32::try_from(self.recent_fails.len()).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn active(rise: u32, fall: u32) -> Option<HealthSpec> {
        Some(HealthSpec { rise, fall, start_healthy: false })
    }

    fn off() -> Passive {
        Passive { max_fails: 0, fail_timeout: Duration::from_secs(10) }
    }

    #[test]
    fn starts_unhealthy_with_an_active_check_and_rises_after_rise_successes() {
        let now = Instant::now();
        let mut h = Health::new(active(3, 3), off());
        assert!(!h.eligible(now));
        assert_eq!(h.report(true, MS), None);
        assert_eq!(h.report(true, MS), None);
        assert_eq!(h.report(true, MS), Some(true));
        assert!(h.eligible(now));
        assert_eq!(Health::new(None, off()).view(now).state, HealthState::Healthy, "no check: healthy");
    }

    #[test]
    fn counters_are_consecutive_one_failure_after_a_success_does_not_eject() {
        let now = Instant::now();
        let mut h = Health::new(Some(HealthSpec { rise: 3, fall: 3, start_healthy: true }), off());
        // frp's bug: a failure counter that never resets would reach 3 here.
        for ok in [false, true, false, false, true, false, true, false, false, true] {
            h.report(ok, MS);
            assert!(h.eligible(now), "a streak of fewer than 3 failures never ejects");
        }
        h.report(false, MS);
        h.report(false, MS);
        assert_eq!(h.report(false, MS), Some(false));
        assert_eq!(h.view(now).fail_streak, 3);
    }

    #[test]
    fn a_flapping_backend_never_becomes_healthy() {
        let now = Instant::now();
        let mut h = Health::new(active(3, 3), off());
        for i in 0..100 {
            h.report(i % 2 == 0, MS);
            assert!(!h.eligible(now), "check {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passive_failures_within_the_window_eject_then_trial_traffic_decides() {
        let passive = Passive { max_fails: 3, fail_timeout: Duration::from_secs(10) };
        let mut h = Health::new(None, passive);
        // Failures spread wider than the window never eject.
        for _ in 0..5 {
            assert!(!h.dial_failed(Instant::now()));
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!h.dial_failed(Instant::now()));
        assert!(!h.dial_failed(Instant::now()));
        assert!(h.dial_failed(Instant::now()), "third failure within 10 s");
        assert_eq!(h.view(Instant::now()).state, HealthState::Ejected);
        assert!(!h.eligible(Instant::now()));

        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(h.eligible(Instant::now()), "trial traffic after fail_timeout");
        assert!(h.dial_failed(Instant::now()), "a failed trial ejects again at once");
        tokio::time::advance(Duration::from_secs(10)).await;
        h.dial_succeeded();
        assert!(!h.dial_failed(Instant::now()), "a successful trial restores the normal window");
        assert!(h.eligible(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn with_active_checks_rise_successes_end_an_ejection() {
        let passive = Passive { max_fails: 1, fail_timeout: Duration::from_secs(30) };
        let mut h = Health::new(Some(HealthSpec { rise: 2, fall: 2, start_healthy: true }), passive);
        assert!(h.dial_failed(Instant::now()));
        assert!(!h.eligible(Instant::now()));
        h.report(true, MS);
        assert!(!h.eligible(Instant::now()));
        assert_eq!(h.report(true, MS), Some(true));
        assert!(h.eligible(Instant::now()), "back before the 30 s ejection ends");
    }
}
