//! Reloading the server's config while it runs (`POST /reload`, SIGHUP).
//!
//! What applies, and how:
//! - `[[groups]]`: an added group binds its port and starts; a removed one stops accepting at
//!   once (its connections get the drain grace period) and its backends get no more work; a
//!   changed one keeps its backends and connections: key, policy, retries and passive-check
//!   settings change in place, a new port is bound beside the old one, new host names replace
//!   the old routes. A change of `type` is a removal and an addition.
//! - `[[proxies]]`: by listen address; added ones start, removed ones stop, changed ones are
//!   bound again (`SO_REUSEPORT`) and the old listener stops.
//! - `token` and `[[clients]]`: the next Hello uses them; a connected client whose entry is
//!   gone or whose token changed is disconnected, and a handshake under way with the old token
//!   is refused when it would install its session (the check runs under the sessions' lock,
//!   after the new config is in place). Narrower port and domain allowances, and groups removed
//!   or re-keyed, withdraw the live services they no longer allow (`Registry::revise`); the
//!   clients are told, and the report lists them as `withdrawn`. `[egress]` applies to the
//!   next forward.
//! - `bind`, `public_bind`, `[tls]`, `state_dir`, `[limits]`, `[vhost]`, `[control]` need a
//!   restart: the report lists them and the running values stay.
//!
//! The running config is read once, as one snapshot; every new socket is bound before anything
//! changes, so a reload that cannot bind (or whose file does not load) changes nothing.

use std::sync::Arc;

use tracing::{info, warn};
use wmproxy_config::{ClientEntry, ConfigError, GroupEntry, GroupKind, ReloadReport, ServerConfig};
use wmproxy_wire::close_code;

use crate::dashboard::events::EventKind;
use crate::groups::{self, GroupSocket, Groups};
use crate::listeners::Listeners;
use crate::metrics::Metrics;
use crate::registry::{Registry, VhostPorts};
use crate::sessions::Sessions;
use crate::settings::ConfigCell;
use crate::sockets::bind_reusable;

/// Why a reload was not applied. The running config is untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server was not started from a file.
    #[error("the server was not started from a config file")]
    NoFile,
    /// The file does not load (the error names the key and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A new listener could not be bound.
    #[error("cannot bind `{key}`: {source}")]
    Bind {
        /// The entry (`groups.NAME`, `proxies.ADDR`).
        key: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a reload changes, and the lock that keeps two reloads from interleaving.
#[derive(Debug)]
pub(crate) struct Reloader {
    pub config: Arc<ConfigCell>,
    pub groups: Arc<Groups>,
    pub listeners: Arc<Listeners>,
    pub registry: Arc<Registry>,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub vhost: VhostPorts,
    /// Held while a reload applies, so that two (SIGHUP and `/reload`) never interleave.
    pub one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Re-reads the config file and applies it; counts the attempt in the metrics.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        self.metrics.reloads.inc();
        let result = match self.config.path() {
            None => Err(ReloadError::NoFile),
            Some(path) => match wmproxy_config::load_server(path) {
                Ok(new) => self.apply(new).await,
                Err(e) => Err(e.into()),
            },
        };
        match &result {
            Ok(report) => {
                self.metrics.last_reload_ok.set(1);
                report.log();
                self.metrics.events.record(EventKind::Reload, "the config was reloaded");
            }
            Err(e) => {
                self.metrics.reload_failures.inc();
                self.metrics.last_reload_ok.set(0);
                warn!(error = %e, "reload refused; the running config is unchanged");
                self.metrics.events.record(EventKind::Reload, format!("a reload was refused: {e}"));
            }
        }
        result
    }

    /// Applies `new` to the running server.
    async fn apply(&self, mut new: ServerConfig) -> Result<ReloadReport, ReloadError> {
        let old = self.config.snapshot();
        let restart = keep_restart_settings(&mut new, &old);
        let mut report = report(&old, &new);
        report.restart_required = restart.restart_required;

        // Bind first: a failure leaves everything as it was.
        let mut group_sockets = Vec::new();
        for entry in &new.groups {
            let unmoved = old
                .groups
                .iter()
                .any(|o| o.name == entry.name && o.kind.port() == entry.kind.port() && same_kind(o, entry));
            if unmoved {
                continue;
            }
            let key = format!("groups.{}", entry.name);
            let bound =
                groups::bind_port(old.public_bind, &entry.kind).map_err(|source| ReloadError::Bind { key, source })?;
            if let Some(socket) = bound {
                group_sockets.push((entry.name.clone(), socket));
            }
        }
        let mut proxy_sockets = Vec::new();
        for proxy in new.proxies.iter().filter(|p| !old.proxies.contains(p)) {
            let key = format!("proxies.{}", proxy.proxy.listen);
            let listener = bind_reusable(proxy.proxy.listen).map_err(|source| ReloadError::Bind { key, source })?;
            proxy_sockets.push((proxy.clone(), listener));
        }

        let new = Arc::new(new);
        self.config.set(new.clone());
        self.apply_groups(&old.groups, &new.groups, group_sockets);
        for proxy in old.proxies.iter().filter(|p| !new.proxies.contains(p)) {
            self.listeners.stop(&format!("proxies.{}", proxy.proxy.listen));
        }
        for (proxy, listener) in proxy_sockets {
            self.listeners.start_proxy(proxy, listener);
        }
        self.disconnect_revoked(&old, &new).await;
        for session in self.sessions.all() {
            for service in self.registry.revise(&session).await {
                report.withdrawn.push(format!("{}/{service}", session.name));
            }
        }
        Ok(report)
    }

    fn apply_groups(
        &self,
        old: &[GroupEntry],
        new: &[GroupEntry],
        mut sockets: Vec<(wmproxy_wire::Name, GroupSocket)>,
    ) {
        for entry in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name && same_kind(o, n))) {
            self.listeners.stop(&format!("groups.{}", entry.name));
            if let Some(group) = self.groups.remove(&entry.name) {
                let dropped = group.clear();
                info!(group = %entry.name, backends = dropped, "group removed by a reload");
            }
        }
        for entry in new.iter().filter(|n| !old.contains(n)) {
            let group = match self.groups.get(&entry.name) {
                Some(group) => {
                    group.update(entry);
                    group
                }
                None => self.groups.insert(entry, self.port_of(&entry.kind)),
            };
            self.listeners.set_group_routes(group.clone(), entry);
            if let Some(at) = sockets.iter().position(|(name, _)| *name == entry.name) {
                let (_, socket) = sockets.swap_remove(at);
                group.set_port(entry.kind.port().unwrap_or_default());
                self.listeners.start_group_port(group, socket);
            }
        }
    }

    /// Where a group of `kind` is served.
    fn port_of(&self, kind: &GroupKind) -> u16 {
        match kind {
            GroupKind::Tcp { remote_port } | GroupKind::Udp { remote_port } => *remote_port,
            GroupKind::Http { .. } => self.vhost.http.unwrap_or_default(),
            GroupKind::Https { .. } => self.vhost.https.unwrap_or_default(),
        }
    }

    /// Disconnects clients whose entry the reload removed or whose token it changed: they must
    /// authenticate again under the new config.
    async fn disconnect_revoked(&self, old: &ServerConfig, new: &ServerConfig) {
        for session in self.sessions.all() {
            let before = old.client(&session.name).map(|e| &e.token);
            let revoked = match new.client(&session.name) {
                None => Some("this client was removed from the server's config"),
                Some(entry) if Some(&entry.token) != before => Some("this client's token changed"),
                Some(_) => None,
            };
            if let Some(reason) = revoked {
                info!(client = %session.name, reason, "disconnecting a client after a reload");
                self.registry.end(&self.sessions, &session, close_code::REJECTED, reason).await;
            }
        }
    }
}

fn same_kind(a: &GroupEntry, b: &GroupEntry) -> bool {
    a.kind.service_kind() == b.kind.service_kind()
}

/// What differs between `old` and `new`.
fn report(old: &ServerConfig, new: &ServerConfig) -> ReloadReport {
    let mut report = ReloadReport::default();
    report.compare("groups", &old.groups, &new.groups, |g| g.name.to_string());
    report.compare("proxies", &old.proxies, &new.proxies, |p| p.proxy.listen.to_string());
    report.compare("clients", &sorted(old), &sorted(new), |(name, _)| name.clone());
    if old.shared != new.shared {
        report.changed.push("token".into());
    }
    if old.egress != new.egress {
        report.changed.push("egress".into());
    }
    report
}

/// Named clients in name order, for comparing.
fn sorted(config: &ServerConfig) -> Vec<(String, ClientEntry)> {
    let mut clients: Vec<_> = config.clients.iter().map(|(n, e)| (n.clone(), e.clone())).collect();
    clients.sort_by(|a, b| a.0.cmp(&b.0));
    clients
}

/// Copies into `config` the settings of `from` that a reload does not change, and reports those
/// that differed as needing a restart.
fn keep_restart_settings(config: &mut ServerConfig, from: &ServerConfig) -> ReloadReport {
    let mut report = ReloadReport::default();
    report.restart_if("bind", &from.bind, &config.bind);
    report.restart_if("tcp_bind", &from.tcp_bind, &config.tcp_bind);
    report.restart_if("public_bind", &from.public_bind, &config.public_bind);
    report.restart_if("tls", &from.tls, &config.tls);
    report.restart_if("state_dir", &from.state_dir, &config.state_dir);
    report.restart_if("limits", &from.limits, &config.limits);
    report.restart_if("vhost", &from.vhost, &config.vhost);
    report.restart_if("control", &from.control, &config.control);
    config.bind = from.bind;
    config.public_bind = from.public_bind;
    config.tls.clone_from(&from.tls);
    config.state_dir.clone_from(&from.state_dir);
    config.limits.clone_from(&from.limits);
    config.vhost.clone_from(&from.vhost);
    config.control.clone_from(&from.control);
    report
}
