//! Recent events for the dashboard (`GET /events`): connects and disconnects, health changes,
//! reloads, drains and refusals, oldest first. A bounded ring: at most [`MAX_EVENTS`], the oldest
//! dropped first. The same event repeated within [`COALESCE`] (a refusal flood) bumps the
//! newest entry's count instead of taking a new one, so a flood costs one entry and cannot
//! push the rest out.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept.
pub const MAX_EVENTS: usize = 200;
/// Repeats of the newest event within this long are counted on it.
pub const COALESCE: Duration = Duration::from_secs(10);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client authenticated.
    Connected,
    /// A client's tunnel ended.
    Disconnected,
    /// A group backend became healthy, unhealthy or ejected.
    Health,
    /// A reload, applied or refused.
    Reload,
    /// A group backend drained or undrained through the control API.
    Drain,
    /// A limit or a wrong token refused someone.
    Refused,
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When it (first) happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What kind.
    pub kind: EventKind,
    /// What, in words (names and addresses, never secrets).
    pub text: String,
    /// How many times within [`COALESCE`] of each other.
    pub count: u64,
    #[serde(skip)]
    last: Option<Instant>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Records an event now.
    pub fn record(&self, kind: EventKind, text: impl Into<String>) {
        let text = text.into();
        let now = Instant::now();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(newest) = ring.back_mut()
            && newest.kind == kind
            && newest.text == text
            && newest.last.is_some_and(|last| now.duration_since(last) < COALESCE)
        {
            newest.count += 1;
            newest.last = Some(now);
            return;
        }
        if ring.len() == MAX_EVENTS {
            ring.pop_front();
        }
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        ring.push_back(Event {
            at_ms: u64::try_from(at_ms).unwrap_or(u64::MAX),
            kind,
            text,
            count: 1,
            last: Some(now),
        });
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_coalesce_and_the_ring_is_bounded() {
        let events = Events::default();
        for _ in 0..1000 {
            events.record(EventKind::Refused, "wrong token from 192.0.2.1");
        }
        let list = events.list();
        assert_eq!(list.len(), 1, "a flood is one entry");
        assert_eq!(list[0].count, 1000);

        for i in 0..(MAX_EVENTS + 50) {
            events.record(EventKind::Connected, format!("client c{i} connected"));
        }
        let list = events.list();
        assert_eq!(list.len(), MAX_EVENTS);
        assert_eq!(
            list.last().map(|e| e.text.as_str()),
            Some(format!("client c{} connected", MAX_EVENTS + 49).as_str())
        );
        assert!(list.iter().all(|e| e.kind == EventKind::Connected), "the oldest went first");
    }
}
