//! The live tunnels by client name, and the failed-login throttle in front of them.
//!
//! A name has one session. A new one of the same name replaces it at once if it shows the
//! session's resume secret (the same machine, back after a network change) or if the old
//! connection is closed; otherwise the old one is asked whether it is there (see
//! `Tunnels::seat`), and keeps the name if it answers. Sessions that authenticated with the
//! shared token are counted, so that a leaked token cannot take every client place.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wmproxy_ops::control::HttpNames;
use wmproxy_tunnel::Tunnel;
use wmproxy_wire::{MAX_SERVICES, Name, ResumeSecret, ServiceResult};

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
    /// What the client shows to replace this session at once.
    pub resume: ResumeSecret,
    /// Authenticated with the shared token (not a `[[clients]]` entry).
    pub shared: bool,
    /// How many servers the client keeps a tunnel to at once (its Hello says): more than one
    /// means this server is one of several publishing its services.
    pub servers: u32,
    /// The client's own connections (its forwards' and proxies', TCP and UDP) that left from
    /// this server.
    pub egress: AtomicU64,
    /// Its place in `max_clients`: given back when the tunnel ends, or handed to the session
    /// that replaces it.
    place: Mutex<Option<OwnedSemaphorePermit>>,
    /// Held while its services are registered or revised, so the two never interleave.
    pub registration: tokio::sync::Mutex<()>,
    /// What its latest registration asked and got, for status output.
    results: Mutex<Vec<ServiceResult>>,
    /// The host names and paths its published HTTP services hold, for status output.
    routes: Mutex<Vec<(Name, HttpNames)>>,
    /// Services a reload withdrew that the client has not been told of yet (one per name, so
    /// at most [`MAX_SERVICES`]), and the signal that there are some.
    withdrawn: (Mutex<Vec<ServiceResult>>, Notify),
}

impl Session {
    /// What the latest registration asked and got.
    pub fn results(&self) -> Vec<ServiceResult> {
        self.results.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes this session's place in `max_clients` (for its successor, or to give it back).
    pub fn take_place(&self) -> Option<OwnedSemaphorePermit> {
        self.place.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Records the latest registration's results.
    pub fn set_results(&self, results: &[ServiceResult], routes: Vec<(Name, HttpNames)>) {
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = results.to_vec();
        *self.routes.lock().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// The host names and paths the HTTP service `service` holds, if it is one and published.
    pub fn route_of(&self, service: &str) -> Option<HttpNames> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.iter().find(|(name, _)| name.as_str() == service).map(|(_, spec)| spec.clone())
    }

    /// Records that `withdrawn` were taken back (each with the refusal it would get now): in
    /// the status output at once, and for the client when [`Session::withdrawals`] wakes.
    pub fn record_withdrawn(&self, withdrawn: &[ServiceResult]) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = self.withdrawn.0.lock().unwrap_or_else(|p| p.into_inner());
        for new in withdrawn {
            set_outcome(&mut results, new, false);
            let room = pending.len() < MAX_SERVICES;
            set_outcome(&mut pending, new, room);
        }
        self.withdrawn.1.notify_one();
    }

    /// Waits until services were withdrawn since the last call, and takes them.
    pub async fn withdrawals(&self) -> Vec<ServiceResult> {
        loop {
            let taken = std::mem::take(&mut *self.withdrawn.0.lock().unwrap_or_else(|p| p.into_inner()));
            if !taken.is_empty() {
                return taken;
            }
            self.withdrawn.1.notified().await;
        }
    }
}

/// Gives `new`'s service in `list` its outcome; adds it if it is not there and `add`.
fn set_outcome(list: &mut Vec<ServiceResult>, new: &ServiceResult, add: bool) {
    match list.iter_mut().find(|r| r.name == new.name) {
        Some(old) => old.outcome = new.outcome.clone(),
        None if add => list.push(new.clone()),
        None => {}
    }
}

/// Where a new session of a name stands.
#[derive(Debug)]
pub(crate) enum Seat {
    /// No live session has the name.
    Free,
    /// The live session is this client's own (its resume secret) or its connection is closed:
    /// replace it at once.
    Replace(Arc<Session>),
    /// Another live session has the name: it keeps it if it answers.
    Contested(Arc<Session>),
}

/// Why a session was not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The name's session is not the one the caller decided about (another came in meanwhile).
    Raced,
    /// The shared token's names are all in use.
    SharedFull,
    /// The credential it proved is no longer the running config's (a reload changed it).
    Revoked,
}

#[derive(Debug, Default)]
struct Live {
    by_name: HashMap<Name, Arc<Session>>,
    /// How many of them authenticated with the shared token.
    shared: usize,
}

/// Live sessions by client name, and the failed-login throttle. Locks are never held across
/// an `.await`.
#[derive(Debug)]
pub(crate) struct Sessions {
    live: Mutex<Live>,
    next_id: AtomicU64,
    throttle: Mutex<AuthThrottle>,
    /// Streams one client may open at once (its forwards).
    max_forwards: u32,
}

impl Sessions {
    /// No sessions yet; each will allow `max_forwards` streams from its client at once.
    pub fn new(max_forwards: u32) -> Self {
        Self { live: Mutex::default(), next_id: AtomicU64::default(), throttle: Mutex::default(), max_forwards }
    }

    /// A new session of `name` on `tunnel` (not yet installed), holding `place` in
    /// `max_clients`; `shared` if it authenticated with the shared token.
    pub fn create(
        &self,
        name: Name,
        tunnel: Arc<Tunnel>,
        (shared, place): (bool, OwnedSemaphorePermit),
        servers: u32,
    ) -> Arc<Session> {
        let mut resume = [0u8; 32];
        // The system's generator does not fail on Linux; were it to, the zero secret matches no
        // client's (a client only ever shows one the server gave it).
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut resume);
        Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            tunnel,
            forwards: Arc::new(Semaphore::new(self.max_forwards as usize)),
            since: SystemTime::now(),
            resume: ResumeSecret(resume),
            shared,
            servers,
            egress: AtomicU64::new(0),
            place: Mutex::new(Some(place)),
            registration: tokio::sync::Mutex::default(),
            results: Mutex::default(),
            routes: Mutex::default(),
            withdrawn: Default::default(),
        })
    }

    /// Where a new session of `name` stands, for a client that shows `resume`.
    pub fn seat(&self, name: &Name, resume: Option<&ResumeSecret>) -> Seat {
        match self.lock().by_name.get(name) {
            None => Seat::Free,
            Some(old) if old.tunnel.conn().close_reason().is_some() => Seat::Replace(old.clone()),
            Some(old) if resume.is_some_and(|r| old.resume.matches(r)) => Seat::Replace(old.clone()),
            Some(old) => Seat::Contested(old.clone()),
        }
    }

    /// Installs `session` in place of the session `replacing` (or of none), unless the name's
    /// session is another one by now, the session is the shared token's and `max_shared` of
    /// those are live, or `still_valid` (asked under the lock) says a reload has revoked its
    /// credential. A reload installs its config before it looks for sessions to disconnect, so
    /// a session is either refused here or seen there. Returns the session it replaced.
    pub fn install(
        &self,
        session: &Arc<Session>,
        (replacing, max_shared): (Option<SessionId>, usize),
        still_valid: impl FnOnce() -> bool,
    ) -> Result<Option<Arc<Session>>, Refused> {
        let mut live = self.lock();
        if !still_valid() {
            return Err(Refused::Revoked);
        }
        let current = live.by_name.get(&session.name);
        if current.map(|s| s.id) != replacing {
            return Err(Refused::Raced);
        }
        let shared = live.shared - usize::from(current.is_some_and(|s| s.shared)) + usize::from(session.shared);
        if session.shared && shared > max_shared {
            return Err(Refused::SharedFull);
        }
        live.shared = shared;
        Ok(live.by_name.insert(session.name.clone(), session.clone()))
    }

    /// Removes `session` unless a newer session of the same name has replaced it.
    pub fn remove(&self, session: &Session) {
        let mut live = self.lock();
        if live.by_name.get(&session.name).is_some_and(|s| s.id == session.id) {
            live.by_name.remove(&session.name);
            live.shared -= usize::from(session.shared);
        }
    }

    /// The live session of `client`.
    pub fn get(&self, client: &str) -> Option<Arc<Session>> {
        self.lock().by_name.get(client).cloned()
    }

    /// Every live session, by client name.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut all: Vec<_> = self.lock().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The failed-login table.
    pub fn throttle(&self) -> MutexGuard<'_, AuthThrottle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // Every change is made whole under the lock: a poisoned one is still consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}
