//! The table of live tunnels, by client name. A client that connects again replaces its old
//! session: the old connection is closed and its public ports released before the new one binds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quinn::VarInt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wmproxy_config::Limits;
use wmproxy_proto::udp::{FlowTable, UdpStats};

use crate::groups::{self, Membership};
use crate::vhost::Router;

/// One authenticated tunnel.
#[derive(Debug)]
pub(crate) struct Session {
    /// Distinguishes this session from a later one of the same name.
    pub id: u64,
    /// The client's name.
    pub name: String,
    /// The tunnel.
    pub conn: quinn::Connection,
    /// Cancelled when the session ends; stops its public listeners.
    pub cancel: CancellationToken,
    /// The public listener tasks; waited on so ports are free once [`Session::shut`] returns.
    pub listeners: TaskTracker,
    /// Permits for concurrent public connections to this client (streams we open).
    pub streams: Arc<Semaphore>,
    /// Permits for concurrent forwards from this client (streams it opens). quinn's own stream
    /// limit runs a little above this, because it returns credit in batches.
    pub forwards: Arc<Semaphore>,
    /// The tunnel's UDP flows by id.
    pub flows: Arc<FlowTable>,
    /// Permits for this client's UDP flows, either direction.
    pub udp_permits: Arc<Semaphore>,
    /// The groups its services joined, by service name.
    pub memberships: Mutex<HashMap<String, Membership>>,
    /// When the tunnel was accepted.
    pub since: std::time::SystemTime,
    /// What its latest registration asked and got, for status output.
    pub services: Mutex<Vec<wmproxy_proto::wire::ServiceResult>>,
    /// The services published now, by name: a later `Register` keeps the unchanged ones.
    pub published: Mutex<HashMap<String, crate::publish::Published>>,
}

impl Session {
    /// The group memberships. Never held across an `.await`.
    pub fn memberships(&self) -> std::sync::MutexGuard<'_, HashMap<String, Membership>> {
        self.memberships.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The published services. Never held across an `.await`.
    pub fn published(&self) -> std::sync::MutexGuard<'_, HashMap<String, crate::publish::Published>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the session: takes its backends out of their groups and its routes off the vhost
    /// `router`, closes the tunnel with `code`/`reason`, stops its public listeners and waits
    /// until their ports are closed.
    pub async fn shut(&self, router: &Router, code: u32, reason: &str) {
        self.cancel.cancel();
        self.flows.close_all();
        let memberships: Vec<_> = self.memberships().drain().map(|(_, m)| m).collect();
        groups::leave(&memberships);
        router.remove_session(self.id);
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
        self.listeners.close();
        self.listeners.wait().await;
    }
}

/// Live sessions by client name. The lock is never held across an `.await`.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_name: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// Installs a session for `name`; returns it and the session it replaced, if any.
    pub fn insert(
        &self,
        name: &str,
        conn: quinn::Connection,
        limits: &Limits,
        udp_stats: Arc<UdpStats>,
    ) -> (Arc<Session>, Option<Arc<Session>>) {
        let max_streams = limits.max_streams_per_client as usize;
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            conn,
            cancel: CancellationToken::new(),
            listeners: TaskTracker::new(),
            streams: Arc::new(Semaphore::new(max_streams)),
            forwards: Arc::new(Semaphore::new(max_streams)),
            flows: FlowTable::new(udp_stats),
            udp_permits: Arc::new(Semaphore::new(limits.max_udp_flows_per_client as usize)),
            memberships: Mutex::default(),
            since: std::time::SystemTime::now(),
            services: Mutex::default(),
            published: Mutex::default(),
        });
        let replaced = self.lock().insert(name.to_owned(), session.clone());
        (session, replaced)
    }

    /// Removes `session` unless a newer session of the same name has replaced it.
    pub fn remove(&self, session: &Session) {
        let mut map = self.lock();
        if map.get(&session.name).is_some_and(|s| s.id == session.id) {
            map.remove(&session.name);
        }
    }

    /// Drains or restores the group backend `service` of `client`; whether it was found.
    pub fn set_drained(&self, client: &str, service: &str, drained: bool) -> bool {
        let session = self.lock().get(client).cloned();
        let Some(session) = session else {
            return false;
        };
        let found = session.memberships().get(service).map(|(_, b)| b.clone());
        found.map(|b| b.set_drained(drained)).is_some()
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

    /// Names of the connected clients.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }
}
