//! The live tunnels by client name (a client that connects again replaces its old session),
//! and the failed-login throttle in front of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Semaphore;
use wmproxy_tunnel::Tunnel;
use wmproxy_wire::{Name, ServiceResult};

use crate::throttle::AuthThrottle;

/// Tells one session from a later one of the same client.
pub(crate) type SessionId = u64;

/// One authenticated tunnel.
#[derive(Debug)]
pub(crate) struct Session {
    /// Distinguishes this session from a later one of the same name.
    pub id: SessionId,
    /// The client's name.
    pub name: Name,
    /// The tunnel: its connection, the permits of the streams and flows we open, its flows.
    pub tunnel: Arc<Tunnel>,
    /// Permits for the streams the client opens (its forwards). quinn's own stream limit runs a
    /// little above this, because it returns credit in batches.
    pub forwards: Arc<Semaphore>,
    /// When the tunnel was accepted.
    pub since: SystemTime,
    /// What its latest registration asked and got, for status output.
    results: Mutex<Vec<ServiceResult>>,
}

impl Session {
    /// What the latest registration asked and got.
    pub fn results(&self) -> Vec<ServiceResult> {
        self.results.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the latest registration's results.
    pub fn set_results(&self, results: &[ServiceResult]) {
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = results.to_vec();
    }
}

/// Live sessions by client name, and the failed-login throttle. Locks are never held across
/// an `.await`.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_name: Mutex<HashMap<Name, Arc<Session>>>,
    next_id: AtomicU64,
    throttle: Mutex<AuthThrottle>,
}

impl Sessions {
    /// A new session of `name` on `tunnel` (not yet installed), allowing `max_forwards` streams
    /// from the client at once.
    pub fn create(&self, name: Name, tunnel: Arc<Tunnel>, max_forwards: u32) -> Arc<Session> {
        Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            tunnel,
            forwards: Arc::new(Semaphore::new(max_forwards as usize)),
            since: SystemTime::now(),
            results: Mutex::default(),
        })
    }

    /// Installs `session`; returns the session of the same client it replaced, if any.
    pub fn insert(&self, session: &Arc<Session>) -> Option<Arc<Session>> {
        self.lock().insert(session.name.clone(), session.clone())
    }

    /// Removes `session` unless a newer session of the same name has replaced it.
    pub fn remove(&self, session: &Session) {
        let mut map = self.lock();
        if map.get(&session.name).is_some_and(|s| s.id == session.id) {
            map.remove(&session.name);
        }
    }

    /// The live session of `client`.
    pub fn get(&self, client: &str) -> Option<Arc<Session>> {
        self.lock().get(client).cloned()
    }

    /// Every live session, by client name.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The failed-login table.
    pub fn throttle(&self) -> MutexGuard<'_, AuthThrottle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Name, Arc<Session>>> {
        // Single inserts and removes cannot leave the map inconsistent: a poisoned lock is usable.
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }
}
